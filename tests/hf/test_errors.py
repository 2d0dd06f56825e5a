"""Bad input through the CLI entry: a non-zero exit, one line on stderr naming the file or tensor and the fix,
and no output directory (nor temporary leftovers) afterwards."""

from __future__ import annotations

import json

import pytest
import torch

import bessemer.cli.main as cli
from tests.hf.helpers import save_transformers_model, write_baichuan_folder, write_tokenizer


class NeedsCode:
    """A custom class inside a pickle: torch.load(weights_only=True) must refuse it."""

    def __init__(self):
        self.payload = [1, 2, 3]


@pytest.fixture
def run_cli(monkeypatch, capsys):
    # only this verb: the others are built elsewhere and their imports are not under test here
    monkeypatch.setattr(cli, "VERBS", ("convert",))

    def run(*argv: str) -> tuple[int, list[str]]:
        capsys.readouterr()
        rc = cli.main(["convert", *map(str, argv)])
        return rc, capsys.readouterr().err.strip().splitlines()

    return run


def test_convert_is_a_registered_verb():
    assert "convert" in cli.VERBS


def assert_refused(rc: int, err: list[str], out, *words: str) -> None:
    assert rc != 0
    assert len(err) == 1, err
    assert err[0].startswith("bessemer convert: error: ")
    for w in words:
        assert w in err[0], (w, err[0])
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.*")), "temporary output left behind"


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("src") / "llama"
    save_transformers_model(folder, max_shard_size="100KB")
    return folder


def clone(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_missing_shard_named_in_index(tmp_path, llama_dir, run_cli):
    folder = clone(llama_dir, tmp_path / "hf")
    shard = sorted(folder.glob("model-*.safetensors"))[1]
    shard.unlink()
    rc, err = run_cli("--from-hf", folder, "--out", tmp_path / "ck")
    assert_refused(rc, err, tmp_path / "ck", shard.name, "missing", "download")


def test_truncated_safetensors(tmp_path, llama_dir, run_cli):
    folder = clone(llama_dir, tmp_path / "hf")
    shard = sorted(folder.glob("model-*.safetensors"))[-1]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 100])
    rc, err = run_cli("--from-hf", folder, "--out", tmp_path / "ck")
    assert_refused(rc, err, tmp_path / "ck", shard.name, "truncated")


def test_bin_whose_pickle_needs_code(tmp_path, run_cli):
    folder = tmp_path / "hf"
    write_baichuan_folder(folder, alibi=False)
    torch.save(
        {"model.embed_tokens.weight": torch.zeros(3), "extra": NeedsCode()}, folder / "pytorch_model.bin"
    )
    rc, err = run_cli("--from-hf", folder, "--out", tmp_path / "ck")
    assert_refused(rc, err, tmp_path / "ck", "pytorch_model.bin", "weights_only")


def test_unknown_architecture_lists_supported(tmp_path, llama_dir, run_cli):
    folder = clone(llama_dir, tmp_path / "hf")
    config = json.loads((folder / "config.json").read_text())
    config["architectures"], config["model_type"] = ["GPT2LMHeadModel"], "gpt2"
    (folder / "config.json").write_text(json.dumps(config))
    rc, err = run_cli("--from-hf", folder, "--out", tmp_path / "ck")
    assert_refused(rc, err, tmp_path / "ck", "GPT2LMHeadModel", "LlamaForCausalLM", "BaichuanForCausalLM")


def test_tensor_shape_disagrees_with_config(tmp_path, llama_dir, run_cli):
    folder = clone(llama_dir, tmp_path / "hf")
    config = json.loads((folder / "config.json").read_text())
    config["intermediate_size"] = 128
    (folder / "config.json").write_text(json.dumps(config))
    rc, err = run_cli("--from-hf", folder, "--out", tmp_path / "ck")
    assert_refused(rc, err, tmp_path / "ck", "mlp.gate_proj.weight", "[160, 64]", "[128, 64]", "config.json")


def test_missing_config(tmp_path, run_cli):
    (tmp_path / "hf").mkdir()
    write_tokenizer(tmp_path / "hf")
    rc, err = run_cli("--from-hf", tmp_path / "hf", "--out", tmp_path / "ck")
    assert_refused(rc, err, tmp_path / "ck", "config.json")


def test_output_that_holds_something_needs_overwrite(tmp_path, llama_dir, run_cli):
    out = tmp_path / "ck"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    rc, err = run_cli("--from-hf", llama_dir, "--out", out)
    assert rc != 0 and len(err) == 1 and "--overwrite" in err[0]
    assert (out / "keep.txt").read_text() == "mine"  # untouched
    assert not list(tmp_path.glob(".ck.*"))
    # --overwrite replaces only a folder Bessemer wrote: this one is the user's
    rc, err = run_cli("--from-hf", llama_dir, "--out", out, "--overwrite")
    assert rc != 0 and len(err) == 1 and ".bessemer-output" in err[0]
    assert (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    assert run_cli("--from-hf", llama_dir, "--out", out)[0] == 0  # an empty folder is fine
    assert run_cli("--from-hf", llama_dir, "--out", out, "--overwrite")[0] == 0  # our own output
    assert (out / "model.json").is_file()
    # the export direction refuses the same way
    (tmp_path / "hf_out").mkdir()
    (tmp_path / "hf_out" / "x").write_text("x")
    rc, err = run_cli("--to-hf", out, "--out", tmp_path / "hf_out")
    assert rc != 0 and len(err) == 1 and "--overwrite" in err[0]


def test_as_llama_refused_for_alibi(tmp_path, run_cli):
    write_baichuan_folder(tmp_path / "hf", alibi=True)
    assert run_cli("--from-hf", tmp_path / "hf", "--out", tmp_path / "ck")[0] == 0
    rc, err = run_cli("--to-hf", tmp_path / "ck", "--out", tmp_path / "out", "--as", "llama")
    assert_refused(rc, err, tmp_path / "out", "alibi", "drop --as llama")


def test_error_while_writing_leaves_nothing(tmp_path, llama_dir, monkeypatch):
    """A failure after output has begun (here: the disk 'fills' on the third tensor) removes the partial output."""
    from bessemer.errors import ConversionError
    from bessemer.hf import convert_from_hf, safetensors_io

    real, calls = safetensors_io.tensor_bytes, []

    def failing(t):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(t)

    monkeypatch.setattr("bessemer.hf.convert.tensor_bytes", failing)
    with pytest.raises(OSError):
        convert_from_hf(llama_dir, tmp_path / "ck", dtype="float16")  # a cast takes the tensor path
    assert not (tmp_path / "ck").exists() and not list(tmp_path.glob(".ck.*"))
    with pytest.raises(ConversionError):
        convert_from_hf(llama_dir, tmp_path / "ck", shard_size="lots")


@pytest.fixture(scope="module")
def llama_single(tmp_path_factory):
    """A tiny LLaMA in one model.safetensors (no index), without tokenizer files."""
    folder = tmp_path_factory.mktemp("src") / "single"
    save_transformers_model(folder, tokenizer=False)
    return folder


def edited(src, dst, edit):
    """A copy of the single-file folder `src` whose tensors `edit` (a function of the state dict) changed."""
    from safetensors.torch import load_file, save_file

    folder = clone(src, dst)
    state = load_file(folder / "model.safetensors")
    edit(state)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def test_tensor_in_two_files_without_index_is_refused(tmp_path, llama_dir, run_cli):
    folder = clone(llama_dir, tmp_path / "hf")
    (folder / "model.safetensors.index.json").unlink()
    shard = sorted(folder.glob("model-*.safetensors"))[0]
    (folder / "stray.safetensors").write_bytes(shard.read_bytes())  # which copy is meant is anyone's guess
    rc, err = run_cli("--from-hf", folder, "--out", tmp_path / "ck")
    assert_refused(rc, err, tmp_path / "ck", "stray.safetensors", shard.name, "remove the stray file")


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda s: s.pop("model.norm.weight"), ("'model.norm.weight'", "missing")),
        (
            lambda s: s.update(
                {"model.layers.1.mlp.up_proj.weight": s["model.layers.1.mlp.up_proj.weight"][:, :8].clone()}
            ),
            ("'model.layers.1.mlp.up_proj.weight'", "[160, 8]", "[160, 64]"),
        ),
        (
            lambda s: s.update(
                {"model.layers.0.self_attn.o_proj.weight": torch.zeros(64, 64, dtype=torch.int32)}
            ),
            ("'model.layers.0.self_attn.o_proj.weight'", "int32"),
        ),
    ],
    ids=["missing", "short", "integer"],
)
def test_weights_that_do_not_fit_the_config_name_the_tensor(tmp_path, llama_single, run_cli, edit, words):
    folder = edited(llama_single, tmp_path / "hf", edit)
    rc, err = run_cli("--from-hf", folder, "--out", tmp_path / "ck")
    assert_refused(rc, err, tmp_path / "ck", *words)


def test_config_flag_that_is_not_a_boolean_is_refused(tmp_path, llama_single, run_cli):
    folder = clone(llama_single, tmp_path / "hf")
    config = json.loads((folder / "config.json").read_text())
    config["tie_word_embeddings"] = "false"  # truthy in Python: would tie and drop lm_head
    (folder / "config.json").write_text(json.dumps(config))
    rc, err = run_cli("--from-hf", folder, "--out", tmp_path / "ck")
    assert_refused(rc, err, tmp_path / "ck", "tie_word_embeddings", "true or false")


def test_nan_and_inf_weights_are_named_in_a_warning(tmp_path, llama_single, caplog):
    from bessemer.hf import convert_from_hf, convert_to_hf

    def poison(state):
        state["model.layers.1.mlp.down_proj.weight"][3, 4] = float("nan")
        state["model.norm.weight"][0] = float("inf")

    folder = edited(llama_single, tmp_path / "hf", poison)
    for dtype in ("keep", "bfloat16"):  # copied byte for byte, and cast
        caplog.clear()
        convert_from_hf(folder, tmp_path / dtype, dtype=dtype)
        warned = [
            r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "NaN" in r.getMessage()
        ]
        assert (
            len(warned) == 1 and "2 tensor(s)" in warned[0] and "layers.1.feed_forward.w2.weight" in warned[0]
        )
    caplog.clear()
    convert_to_hf(tmp_path / "keep", tmp_path / "back")
    assert any("NaN" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    caplog.clear()
    convert_from_hf(llama_single, tmp_path / "clean")
    assert not any("NaN" in r.getMessage() for r in caplog.records)


def test_all_finite_reads_the_exponent_bits_of_every_float_dtype():
    from bessemer.hf.safetensors_io import all_finite, tensor_bytes

    for dtype in (
        torch.float64,
        torch.float32,
        torch.float16,
        torch.bfloat16,
        torch.float8_e5m2,
        torch.float8_e4m3fn,
    ):
        values = torch.tensor([0.0, -1.5, 2.0, -0.0, 0.25]).to(dtype)
        assert all_finite(tensor_bytes(values), dtype), dtype
        bad = [float("nan")] if dtype == torch.float8_e4m3fn else [float("nan"), float("inf"), -float("inf")]
        for value in bad:
            poisoned = values.clone()
            poisoned[2] = value
            assert not all_finite(tensor_bytes(poisoned), dtype), (dtype, value)
    assert all_finite(tensor_bytes(torch.tensor([-1, 2**31 - 1], dtype=torch.int32)), torch.int32)


def test_tied_config_whose_files_hold_another_head_warns(tmp_path, llama_single, caplog):
    from bessemer.hf import convert_from_hf

    folder = clone(llama_single, tmp_path / "hf")  # untied weights: lm_head differs from the embeddings
    config = json.loads((folder / "config.json").read_text())
    config["tie_word_embeddings"] = True
    (folder / "config.json").write_text(json.dumps(config))
    convert_from_hf(folder, tmp_path / "ck")
    assert any("lm_head.weight, which differs" in r.getMessage() for r in caplog.records)
