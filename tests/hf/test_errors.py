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
