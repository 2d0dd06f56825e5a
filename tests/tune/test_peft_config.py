"""PEFT adapter variants made by `peft` itself: each loads with PEFT's logits, or is refused naming its key."""

from __future__ import annotations

import json

import pytest
import torch

from bessemer.errors import ConversionError
from bessemer.hf import convert_from_hf
from bessemer.tune.peft_config import read_peft_config
from bessemer.tune.peft_io import export_peft, import_peft, load_adapted
from tests.hf.helpers import save_transformers_model

peft = pytest.importorskip("peft")

TOKENS = torch.tensor([[1, 5, 9, 200, 17, 3, 44, 45], [7, 7, 8, 9, 10, 11, 12, 13]])


def _tiny(tmp_path_factory, tied: bool):
    """A tiny LLaMA as a HF folder and as a Bessemer checkpoint."""
    root = tmp_path_factory.mktemp("peftbase")
    save_transformers_model(root / "hf", tokenizer=False, tie_word_embeddings=tied)
    convert_from_hf(root / "hf", root / "ckpt")
    return root / "hf", root / "ckpt"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return _tiny(tmp_path_factory, tied=False)


@pytest.fixture(scope="module")
def tiny_tied(tmp_path_factory):
    return _tiny(tmp_path_factory, tied=True)


def peft_adapter(hf_dir, folder, **lora):
    """A PEFT adapter on the HF model with every trainable tensor moved off its init; saved to `folder`."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    adapted = peft.get_peft_model(model, peft.LoraConfig(task_type="CAUSAL_LM", **lora))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in adapted.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    adapted.save_pretrained(folder)
    return folder


def peft_logits(hf_dir, folder):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    with torch.no_grad():
        return peft.PeftModel.from_pretrained(model, folder).eval()(TOKENS).logits


VARIANTS = {
    # rsLoRA (scale alpha / sqrt(r), r=8 so sqrt is inexact), targets as a regex string, an excluded module
    "rslora-regex": dict(
        r=8,
        lora_alpha=6,
        use_rslora=True,
        target_modules=r".*\.(q_proj|v_proj|up_proj)",
        exclude_modules=["up_proj"],
    ),
    # on a tied model: every linear, bias="all" (no biases here), fan_in_fan_out (PEFT resets it for nn.Linear)
    "all-linear": dict(r=4, lora_alpha=8, target_modules="all-linear", bias="all", fan_in_fan_out=True),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_peft_variant_imports_with_peft_logits_and_exports_back(request, variant, tmp_path):
    hf_dir, ckpt = request.getfixturevalue("tiny_tied" if variant == "all-linear" else "tiny")
    folder = peft_adapter(hf_dir, tmp_path / "adapter", **VARIANTS[variant])
    expected = peft_logits(hf_dir, folder)
    run = import_peft(folder, ckpt, tmp_path / "run")
    model, _ = load_adapted(run)
    with torch.no_grad():
        torch.testing.assert_close(model(TOKENS), expected, rtol=0, atol=1e-5)
    exported = export_peft(run, tmp_path / "back")  # plain LoRA now (rsLoRA as its equivalent alpha)
    torch.testing.assert_close(peft_logits(hf_dir, exported), expected, rtol=0, atol=1e-5)


REFUSED = {
    "lm_head-target": (dict(r=4, target_modules=["q_proj", "lm_head"]), "lm_head"),
    "dora": (dict(r=4, target_modules=["q_proj"], use_dora=True), "use_dora"),
    "embeddings-apart-from-tied-head": (
        dict(r=4, target_modules=["q_proj"], modules_to_save=["embed_tokens"]),
        "ensure_weight_tying",
    ),
}


@pytest.mark.parametrize("variant", REFUSED)
def test_peft_variant_plain_lora_cannot_express_is_refused(request, variant, tmp_path):
    # an untied model trains its embeddings apart from its head by design: that case is the tied one's
    hf_dir, ckpt = request.getfixturevalue("tiny_tied" if variant.endswith("tied-head") else "tiny")
    lora, key = REFUSED[variant]
    folder = peft_adapter(hf_dir, tmp_path / "adapter", **lora)
    with pytest.raises(ConversionError, match=key) as err:
        import_peft(folder, ckpt, tmp_path / "run")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("fields", "key"),
    [
        ({"rank_pattern": {"q_proj": 2}}, "rank_pattern"),
        ({"layers_to_transform": [1]}, "layers_to_transform"),
        ({"init_lora_weights": "pissa"}, "init_lora_weights"),  # base rewritten: silently wrong if read
        ({"init_lora_weights": "pissa_niter_4"}, "init_lora_weights"),
        ({"init_lora_weights": "olora"}, "init_lora_weights"),
        ({"use_fancy_new_thing": True}, "use_fancy_new_thing"),
        ({"r": "8"}, "r="),
        ({"r": 0}, "r="),
        ({"lora_alpha": float("nan")}, "lora_alpha"),
        ({"lora_alpha": -2}, "lora_alpha"),
        ({"lora_dropout": 1.5}, "lora_dropout"),
        ({"bias": "some"}, "bias"),
    ],
)
def test_adapter_config_changing_the_math_or_garbled_is_refused_naming_the_key(fields, key, tmp_path):
    config = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]} | fields
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ConversionError, match=key) as err:
        read_peft_config(tmp_path)
    assert "\n" not in str(err.value)


def test_adapter_config_unknown_unset_keys_and_rslora_are_read(tmp_path):
    config = {"peft_type": "LORA", "r": 4, "lora_alpha": 3, "use_rslora": True, "some_future_key": None}
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    cfg, _ = read_peft_config(tmp_path)
    assert (cfg.rank, cfg.alpha / cfg.rank) == (4, 3 / 2)  # rsLoRA's alpha / sqrt(r)


def test_damaged_adapter_file_is_refused_in_one_line(tiny, tmp_path):
    hf_dir, ckpt = tiny
    folder = peft_adapter(hf_dir, tmp_path / "adapter", r=4, target_modules=["q_proj"])
    data = (folder / "adapter_model.safetensors").read_bytes()
    (folder / "adapter_model.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(ConversionError, match="adapter_model.safetensors") as err:
        import_peft(folder, ckpt, tmp_path / "run")
    assert "\n" not in str(err.value)
