"""The streaming safetensors reader/writer agrees with the safetensors library, shard by shard."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from bessemer.errors import ConversionError
from bessemer.hf.safetensors_io import (
    OutTensor,
    parse_size,
    read_header,
    read_tensor,
    tensor_bytes,
    write_sharded,
)


def test_reader_matches_library(tmp_path):
    tensors = {
        "a": torch.randn(3, 5),
        "b": torch.randn(7).to(torch.bfloat16),
        "c": torch.arange(6, dtype=torch.int64).view(2, 3),
        "d": torch.tensor(1.5, dtype=torch.float16),
    }
    save_file(tensors, str(tmp_path / "x.safetensors"))
    infos = read_header(tmp_path / "x.safetensors")
    for name, t in tensors.items():
        assert torch.equal(read_tensor(infos[name]), t), name


def test_writer_output_reads_back_with_library(tmp_path):
    tensors = {f"t{i}": torch.randn(i + 1, 4).to(torch.float16) for i in range(6)}
    plan = [
        OutTensor(n, t.dtype, tuple(t.shape), lambda f, t=t: f.write(tensor_bytes(t)))
        for n, t in tensors.items()
    ]
    index = write_sharded(tmp_path, plan, shard_size=40)
    files = sorted(tmp_path.glob("*.safetensors"))
    assert len(files) > 1 and set(index["weight_map"].values()) == {f.name for f in files}
    assert index["metadata"]["total_size"] == sum(t.numel() * 2 for t in tensors.values())
    for f in files:
        with safe_open(str(f), framework="pt") as r:
            assert r.metadata() == {"format": "pt"}
            for name in r.keys():  # noqa: SIM118
                assert torch.equal(r.get_tensor(name), tensors[name])


def test_parse_size():
    assert parse_size("5GB") == 5 * 10**9
    assert parse_size("2GiB") == 2 * 2**30
    assert parse_size("500MB") == 500 * 10**6
    assert parse_size("1234") == 1234
    for bad in ("0", "0.0001KB", "lots"):
        with pytest.raises(ConversionError, match="shard size"):
            parse_size(bad)
