"""Shared fixtures: the demo tokenizer and a tiny random-weight checkpoint that carries it."""

from __future__ import annotations

import json

import pytest
import torch

from bessemer.models import build_model, get_preset


def write_checkpoint(out, tokenizer_dir, template: str = "chatml", **overrides):
    """A Bessemer checkpoint of random weights: model.json, model/model.safetensors, meta.json, tokenizer/."""
    import shutil

    from safetensors.torch import save_file

    from bessemer.checkpoint import save_model_config

    cfg = get_preset("tiny", **{"n_layers": 2, **overrides})
    model = build_model(cfg, seed=0)
    (out / "model").mkdir(parents=True)
    save_model_config(cfg, out)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if cfg.tie_embeddings:  # a tied head is stored once, as the embedding table
        state.pop("output.weight")
    save_file(state, str(out / "model" / "model.safetensors"))
    meta = {"format": "bessemer", "version": 1, "family": cfg.family, "template": template}
    (out / "meta.json").write_text(json.dumps(meta))
    shutil.copytree(tokenizer_dir, out / "tokenizer")
    return out


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory, demo_tokenizer_dir):
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-chat", demo_tokenizer_dir)


@pytest.fixture(scope="session")
def loaded(tiny_ckpt):
    from bessemer.infer.loading import load_for_inference

    torch.manual_seed(0)
    return load_for_inference(tiny_ckpt, device="cpu")
