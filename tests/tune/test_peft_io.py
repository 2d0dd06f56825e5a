"""PEFT adapter folders in and out against `peft` itself, and merging, on a tiny LoRA run."""

from __future__ import annotations

import json

import pytest
import torch

from bessemer.checkpoint import load_model
from bessemer.config import load_config
from bessemer.errors import ConversionError
from bessemer.hf import convert_to_hf
from bessemer.train.trainer import Trainer
from bessemer.tune.peft_io import export_peft, import_peft, load_adapted, merge_lora
from tests.train.conftest import tiny_overrides
from tests.tune.conftest import lora_overrides


@pytest.fixture(scope="module")
def lora_run(synthetic_dataset, base_run, tmp_path_factory):
    run = tmp_path_factory.mktemp("lora") / "run"
    extra = {"train.steps": 3, "lora.modules_to_save": '["head"]', "optim.lr": 5e-2}
    Trainer(load_config(None, lora_overrides(synthetic_dataset, base_run, run, **extra))).train()
    return run


@pytest.fixture(scope="module")
def hf_base(base_run, tmp_path_factory):
    return convert_to_hf(base_run, tmp_path_factory.mktemp("hf") / "base").out


TOKENS = torch.tensor([[1, 5, 9, 200, 17, 3, 44, 45, 46, 47], [7, 7, 8, 9, 10, 11, 12, 13, 14, 15]])


def test_peft_loads_our_adapter_with_the_same_logits(lora_run, hf_base, tmp_path):
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    ours, _ = load_adapted(lora_run)
    adapter = ours.layers["0"].attention.wq
    assert adapter.lora_B.abs().max() > 1e-3  # trained: the comparison is not of two base models
    folder = export_peft(lora_run, tmp_path / "peft")
    hf = AutoModelForCausalLM.from_pretrained(hf_base, dtype=torch.float32)
    theirs = peft.PeftModel.from_pretrained(hf, folder).eval()
    with torch.no_grad():
        expected = theirs(TOKENS).logits
        got = ours(TOKENS)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["target_modules"] == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    assert config["modules_to_save"] == ["lm_head"]


def test_peft_round_trip_is_bit_exact(lora_run, base_run, tmp_path):
    from safetensors.torch import load_file

    first = export_peft(lora_run, tmp_path / "a")
    ckpt = import_peft(first, base_run, tmp_path / "imported")
    second = export_peft(ckpt, tmp_path / "b")
    a, b = load_file(first / "adapter_model.safetensors"), load_file(second / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
    assert json.loads((first / "adapter_config.json").read_text()) == json.loads(
        (second / "adapter_config.json").read_text()
    )
    original, imported = load_adapted(lora_run)[0], load_adapted(ckpt)[0]
    with torch.no_grad():
        assert torch.equal(original(TOKENS), imported(TOKENS))


def test_merged_model_equals_adapted_model(lora_run, tmp_path):
    from transformers import AutoModelForCausalLM

    adapted, _ = load_adapted(lora_run)
    merged_ckpt = merge_lora(lora_run, tmp_path / "merged")
    merged, _ = load_model(merged_ckpt)
    hf = AutoModelForCausalLM.from_pretrained(
        merge_lora(lora_run, tmp_path / "hf", fmt="hf"), dtype=torch.float32
    )
    with torch.no_grad():
        want = adapted(TOKENS)
        torch.testing.assert_close(merged(TOKENS), want, rtol=0, atol=1e-5)
        torch.testing.assert_close(hf(TOKENS).logits, want, rtol=0, atol=1e-5)


def test_adapter_of_another_rank_or_base_is_refused(lora_run, base_run, tmp_path):
    folder = export_peft(lora_run, tmp_path / "peft")
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "r": 8}))
    with pytest.raises(ConversionError, match="another rank or base model"):
        import_peft(folder, base_run, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    from safetensors.torch import load_file, save_file

    (folder / "adapter_config.json").write_text(json.dumps(config))
    tensors = load_file(folder / "adapter_model.safetensors")
    key = next(k for k in tensors if ".mlp.down_proj.lora_A" in k)
    tensors[key.replace("down_proj", "fc2")] = tensors.pop(key)  # a GPT-2 style module name
    save_file(tensors, folder / "adapter_model.safetensors")
    with pytest.raises(
        ConversionError, match=r"'base_model\.model\..*fc2.lora_A.weight' matches no module .* --base"
    ):
        import_peft(folder, base_run, tmp_path / "out")
    (tmp_path / "not-peft").mkdir()
    with pytest.raises(ConversionError, match="not a PEFT adapter folder"):
        import_peft(tmp_path / "not-peft", base_run, tmp_path / "out2")


def test_cli_round_trip_and_inference_loading(lora_run, base_run, tmp_path, demo_tokenizer_dir, capsys):
    import shutil

    from bessemer.checkpoint import resolve_checkpoint
    from bessemer.cli.main import main
    from bessemer.infer.loading import load_for_inference

    assert main(["convert", "--to-peft", str(lora_run), "--out", str(tmp_path / "peft")]) == 0
    args = [
        "convert",
        "--from-peft",
        str(tmp_path / "peft"),
        "--base",
        str(base_run),
        "--out",
        str(tmp_path / "c"),
    ]
    assert main(args) == 0
    assert main(["convert", "--merge-lora", str(tmp_path / "c"), "--out", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / "model.json").is_file()
    assert main(["convert", "--from-peft", str(tmp_path / "peft"), "--out", str(tmp_path / "x")]) != 0
    assert "--from-peft needs --base" in capsys.readouterr().err

    ckpt = resolve_checkpoint(tmp_path / "c")
    shutil.copytree(demo_tokenizer_dir, ckpt / "tokenizer", dirs_exist_ok=True)
    loaded = load_for_inference(ckpt, device="cpu", dtype="float32")
    with torch.no_grad():
        assert torch.equal(loaded.model(TOKENS), load_adapted(lora_run)[0](TOKENS))


def test_tied_embeddings_train_export_and_import_as_peft_ties_them(synthetic_dataset, tmp_path):
    # SmolLM2's head is its embedding matrix: PEFT then needs the head's tensor and ensure_weight_tying, else it
    # trains a copy of the embeddings and keeps the old head (logits off by 2.3 on SmolLM2-135M)
    peft = pytest.importorskip("peft")
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    from bessemer.errors import ConfigError

    tied = {"model.tie_embeddings": "true", "train.steps": 1}
    base = tmp_path / "base"
    Trainer(load_config(None, tiny_overrides(synthetic_dataset, base, **tied))).train()
    overrides = lora_overrides(synthetic_dataset, base, tmp_path / "run", **tied)
    with pytest.raises(
        ConfigError,
        match=r"'head' is the embedding matrix in this model \(tie_embeddings\); name 'embeddings'",
    ):
        Trainer(load_config(None, [*overrides, 'lora.modules_to_save=["head"]']))
    run = tmp_path / "run"
    Trainer(load_config(None, [*overrides, 'lora.modules_to_save=["embeddings"]', "optim.lr=5e-2"])).train()
    ours, _ = load_adapted(run)
    folder = export_peft(run, tmp_path / "peft")
    hf = AutoModelForCausalLM.from_pretrained(convert_to_hf(base, tmp_path / "hf").out, dtype=torch.float32)
    theirs = peft.PeftModel.from_pretrained(hf, folder).eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(TOKENS), theirs(TOKENS).logits, rtol=0, atol=1e-5)
    imported = import_peft(folder, base, tmp_path / "imported")
    with torch.no_grad():
        assert torch.equal(load_adapted(imported)[0](TOKENS), ours(TOKENS))
    tensors = load_file(folder / "adapter_model.safetensors")
    tensors["base_model.model.lm_head.weight"] += 1  # a head that is not the embeddings cannot be tied
    save_file(tensors, folder / "adapter_model.safetensors")
    with pytest.raises(
        ConversionError, match="'base_model.model.lm_head.weight' differs from the embeddings"
    ):
        import_peft(folder, base, tmp_path / "refused")
