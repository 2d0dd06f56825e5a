"""Vicuna deltas: target = base + delta per tensor; extra vocabulary rows of the delta are taken as they are."""

from __future__ import annotations

import json

import pytest
import torch

from bessemer.errors import ConversionError
from bessemer.hf import apply_delta
from bessemer.hf.safetensors_io import OutTensor, tensor_bytes, write_sharded
from tests.hf.helpers import VOCAB, read_hf_tensors, save_bin, save_transformers_model, write_tokenizer


def write_safetensors(folder, state):
    plan = [
        OutTensor(n, t.dtype, tuple(t.shape), lambda f, t=t: f.write(tensor_bytes(t)))
        for n, t in state.items()
    ]
    write_sharded(folder, plan, shard_size=10**9)


def test_apply_delta_adds_and_keeps_extra_rows(tmp_path):
    save_transformers_model(tmp_path / "base", dtype=torch.float16)
    base = read_hf_tensors(tmp_path / "base")
    g = torch.Generator().manual_seed(0)
    delta = {}
    for name, t in base.items():
        rows = t.shape[0] + 1 if name in ("model.embed_tokens.weight", "lm_head.weight") else t.shape[0]
        delta[name] = (torch.randn((rows, *t.shape[1:]), generator=g) * 0.01).to(torch.float16)
    save_bin(tmp_path / "delta", delta)  # v0 deltas shipped as .bin
    config = json.loads((tmp_path / "base" / "config.json").read_text()) | {"vocab_size": VOCAB + 1}
    (tmp_path / "delta" / "config.json").write_text(json.dumps(config))
    write_tokenizer(tmp_path / "delta", VOCAB + 1)
    apply_delta(tmp_path / "delta", tmp_path / "base", tmp_path / "out")
    out = read_hf_tensors(tmp_path / "out")
    assert sorted(out) == sorted(base)
    for name, b in base.items():
        d = delta[name]
        assert out[name].dtype == torch.float16 and out[name].shape == d.shape
        assert torch.equal(out[name][: b.shape[0]], b + d[: b.shape[0]]), name
        assert torch.equal(out[name][b.shape[0] :], d[b.shape[0] :]), name
    assert json.loads((tmp_path / "out" / "config.json").read_text())["vocab_size"] == VOCAB + 1
    assert (tmp_path / "out" / "tokenizer.json").is_file()


def test_delta_of_another_base_is_refused(tmp_path):
    save_transformers_model(tmp_path / "base")
    base = read_hf_tensors(tmp_path / "base")
    bad = dict(base)
    bad["model.layers.0.mlp.up_proj.weight"] = torch.zeros(10, 10)
    write_safetensors(tmp_path / "delta", bad)
    (tmp_path / "delta" / "config.json").write_text((tmp_path / "base" / "config.json").read_text())
    with pytest.raises(ConversionError, match=r"up_proj.*\[10, 10\].*another base"):
        apply_delta(tmp_path / "delta", tmp_path / "base", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    partial = {k: v for k, v in base.items() if "norm" not in k}
    write_safetensors(tmp_path / "delta2", partial)
    (tmp_path / "delta2" / "config.json").write_text("{}")
    with pytest.raises(ConversionError, match="lacks tensor"):
        apply_delta(tmp_path / "delta2", tmp_path / "base", tmp_path / "out")


def test_cli_apply_delta_needs_base(tmp_path, monkeypatch, capsys):
    import bessemer.cli.main as cli

    monkeypatch.setattr(cli, "VERBS", ("convert",))
    rc = cli.main(["convert", "--apply-delta", str(tmp_path), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "--base" in err[0]
