"""Hostile weight files: safetensors headers as strict as the `safetensors` library, shard paths kept inside
the model folder, config.json numbers checked before anything is built."""

from __future__ import annotations

import json
import struct
import time

import pytest
import safetensors
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from bessemer.cli import main as cli
from bessemer.errors import BessemerError, ConversionError
from bessemer.hf.safetensors_io import read_header
from bessemer.hf.weights import open_hf_weights
from tests.hf.helpers import save_transformers_model

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _file(path, header: dict, data: bytes) -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def _reference_accepts(path) -> bool:
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            for k in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                f.get_tensor(k)
    except Exception:
        return False
    return True


entries = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(["F32", "F16", "I64", "U8", "BF16", "X9"]),
        "shape": st.lists(st.integers(-1, 4), max_size=3),
        "data_offsets": st.lists(st.integers(-2, 40), min_size=2, max_size=2),
    }
)


@FAST
@given(
    header=st.dictionaries(st.sampled_from(["a", "b", "c"]), entries, max_size=3), extra=st.integers(0, 48)
)
def test_header_verdicts_match_the_safetensors_library(tmp_path, header, extra):
    """Every structured header we accept the reference library accepts, and the other way round."""
    path = tmp_path / "x.safetensors"
    _file(path, header, bytes(extra))
    ours = True
    try:
        read_header(path)
    except ConversionError as exc:
        ours = False
        assert "\n" not in str(exc) and str(path) in str(exc)
    assert ours == _reference_accepts(path)


@FAST
@given(blob=st.binary(max_size=64))
def test_garbage_is_one_line(tmp_path, blob):
    path = tmp_path / "g.safetensors"
    path.write_bytes(blob)
    with pytest.raises(ConversionError) as info:
        read_header(path)
    assert "\n" not in str(info.value)


def test_overlapping_tensors_refused(tmp_path):
    """o_proj given q_proj's bytes: safetensors refuses it; so do we (it used to convert with wo == wq)."""
    path = tmp_path / "o.safetensors"
    _file(
        path,
        {
            "q": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
            "o": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        },
        bytes(16),
    )
    with pytest.raises(ConversionError, match="overlaps"):
        read_header(path)
    assert not _reference_accepts(path)


def test_deep_nesting_and_huge_header_refused(tmp_path):
    path = tmp_path / "d.safetensors"
    raw = b"[" * 100_000 + b"]" * 100_000
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    with pytest.raises(ConversionError, match="damaged"):
        read_header(path)
    path.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(ConversionError, match="header length"):
        read_header(path)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf") / "llama"
    save_transformers_model(folder, tokenizer=False)
    return folder


def _clone(src, dst):
    dst.mkdir(parents=True)
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


@pytest.mark.parametrize("name", ["../secret.safetensors", "/etc/passwd", "sub/../../secret.safetensors"])
def test_index_cannot_name_files_outside_the_folder(tmp_path, hf_dir, name):
    model = _clone(hf_dir, tmp_path / "m")
    save_file({"x": torch.zeros(1)}, str(tmp_path / "secret.safetensors"))
    tensors = list(json.loads((model / "model.safetensors").read_bytes()[8:].split(b"}}")[0] + b"}}").keys())
    index = {"weight_map": {t: "model.safetensors" for t in tensors if t != "__metadata__"}}
    index["weight_map"]["lm_head.weight"] = name
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ConversionError, match="outside the model folder") as info:
        open_hf_weights(model)
    assert "root:" not in str(info.value)  # nothing of the named file is echoed


def test_symlink_out_of_the_folder_refused(tmp_path, hf_dir):
    model = _clone(hf_dir, tmp_path / "m")
    outside = tmp_path / "elsewhere.safetensors"
    (model / "model.safetensors").rename(outside)
    (model / "model.safetensors").symlink_to(outside)
    with pytest.raises(ConversionError, match="links outside"):
        open_hf_weights(model)


def test_symlink_loop_is_one_line(tmp_path, hf_dir, capsys, monkeypatch):
    model = _clone(hf_dir, tmp_path / "m")
    (model / "model.safetensors").unlink()
    (model / "a.safetensors").symlink_to(model / "b.safetensors")
    (model / "b.safetensors").symlink_to(model / "a.safetensors")
    monkeypatch.setattr(cli, "VERBS", ("convert",))
    rc = cli.main(["convert", "--from-hf", str(model), "--out", str(tmp_path / "out")])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("bessemer ")]
    assert rc == 2 and len(err) == 1


HOSTILE_CONFIG = {
    "num_attention_heads": 0,
    "hidden_size": float("inf"),  # what json.loads makes of 1e400
    "max_position_embeddings": float("nan"),
    "num_hidden_layers": 10**7,
    "intermediate_size": 1.5,
    "vocab_size": True,
    "rms_norm_eps": -1.0,
}


@pytest.mark.parametrize("key", list(HOSTILE_CONFIG))
def test_hostile_config_fails_fast_in_one_line(tmp_path, hf_dir, key, capsys, monkeypatch):
    model = _clone(hf_dir, tmp_path / "m")
    cfg = json.loads((model / "config.json").read_text())
    cfg[key] = HOSTILE_CONFIG[key]
    (model / "config.json").write_text(json.dumps(cfg))  # writes NaN / Infinity as Python's json does
    monkeypatch.setattr(cli, "VERBS", ("convert",))
    started = time.perf_counter()
    rc = cli.main(["convert", "--from-hf", str(model), "--out", str(tmp_path / "out")])
    assert time.perf_counter() - started < 1.0
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("bessemer ")]
    assert rc == 2 and len(err) == 1 and key in err[0], err
    assert not (tmp_path / "out").exists()


def test_config_needing_more_than_the_weights_hold(tmp_path, hf_dir):
    from bessemer.hf import convert_from_hf

    model = _clone(hf_dir, tmp_path / "m")
    cfg = json.loads((model / "config.json").read_text())
    cfg["num_hidden_layers"] = 1000
    (model / "config.json").write_text(json.dumps(cfg))
    started = time.perf_counter()
    with pytest.raises(ConversionError, match="1000 layers"):
        convert_from_hf(model, tmp_path / "out")
    assert time.perf_counter() - started < 1.0


def test_model_too_large_to_allocate_is_one_line(tmp_path):
    from bessemer.checkpoint import save_model_config
    from bessemer.checkpoint.model_io import load_model
    from bessemer.models import get_preset

    ckpt = tmp_path / "big"
    ckpt.mkdir()
    save_model_config(get_preset("tiny", dim=16384, n_heads=128, n_layers=256, ffn_dim=65536), ckpt)
    with pytest.raises(BessemerError, match="GiB") as info:
        load_model(ckpt)
    assert "\n" not in str(info.value)
