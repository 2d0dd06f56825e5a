"""manifest.json: sizes and CRC-32 of every file, checked for truncation, flips, loss and escape."""

from __future__ import annotations

import json
import zlib

import pytest

from bessemer.checkpoint.manifest import MANIFEST, crc32_file, verify_manifest, write_manifest
from bessemer.errors import CheckpointError


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "__0_0.distcp").write_bytes(bytes(range(256)) * 100)
    (tmp_path / "model.json").write_text("{}")
    write_manifest(tmp_path)
    return tmp_path


def test_manifest_matches_zlib(folder):
    entries = json.loads((folder / MANIFEST).read_text())["files"]
    data = (folder / "state" / "__0_0.distcp").read_bytes()
    assert entries["state/__0_0.distcp"] == {"size": len(data), "crc32": f"{zlib.crc32(data):08x}"}
    assert crc32_file(folder / "model.json") == entries["model.json"]["crc32"]
    verify_manifest(folder)


def test_damage_is_named(folder):
    shard = folder / "state" / "__0_0.distcp"
    data = bytearray(shard.read_bytes())
    data[7] ^= 1
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="__0_0.distcp: checksum"):
        verify_manifest(folder)
    verify_manifest(folder, checksums=False)  # same size: only the checksum sees a flipped bit
    shard.write_bytes(bytes(data[:-1]))
    with pytest.raises(CheckpointError, match="25599 bytes, the manifest says 25600"):
        verify_manifest(folder, checksums=False)
    shard.unlink()
    with pytest.raises(CheckpointError, match="missing"):
        verify_manifest(folder)


def test_manifest_cannot_point_outside(folder):
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["files"]["../../etc/passwd"] = {"size": 1, "crc32": "0"}
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="outside the checkpoint"):
        verify_manifest(folder)
    (folder / MANIFEST).write_text("[")
    with pytest.raises(CheckpointError, match="damaged"):
        verify_manifest(folder)
