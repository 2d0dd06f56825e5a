"""A checkpoint's manifest: every file with its size and CRC-32, written last, checked before a resume.

CRC-32 (zlib, C speed, releases the GIL) is enough to catch truncation and torn or flipped blocks, which is
what a manifest is for; it is not a defence against someone who edits a checkpoint on purpose (the safe
readers are). Files are hashed on a few threads, so a save costs about one extra read of the checkpoint from
the page cache; on resume the sizes are checked first (a truncated file is found without reading it), then
every rank checksums its share of the files.
"""

from __future__ import annotations

import json
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bessemer.errors import CheckpointError

MANIFEST = "manifest.json"
_KIND = "bessemer-manifest"
_CHUNK = 8 * 1024 * 1024


def crc32_file(path: Path) -> str:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return f"{crc:08x}"


def _files(root: Path) -> list[Path]:
    out = []
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            if path.relative_to(root).as_posix() != MANIFEST:
                out.append(path)
    return sorted(out)


def _threads() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def write_manifest(root: Path) -> dict:
    """Record every file under `root` (relative path, size, crc32) in root/manifest.json; call it last."""
    from bessemer.checkpoint.files import atomic_write_text

    root = Path(root)
    files = _files(root)
    with ThreadPoolExecutor(_threads()) as pool:
        crcs = list(pool.map(crc32_file, files))
    entries = {
        p.relative_to(root).as_posix(): {"size": p.stat().st_size, "crc32": crc}
        for p, crc in zip(files, crcs)
    }
    manifest = {"format": _KIND, "version": 1, "hash": "crc32", "files": entries}
    atomic_write_text(root / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    return manifest


def has_manifest(root: Path) -> bool:
    return (Path(root) / MANIFEST).is_file()


def verify_manifest(root: Path, checksums: bool = True, part: tuple[int, int] = (0, 1)) -> None:
    """Raise CheckpointError naming the first damaged or missing file of `root`.

    part=(rank, world): checksum only every world-th file starting at rank, so ranks share the reading.
    """
    root = Path(root)
    path = root / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        entries = manifest["files"]
        if manifest.get("format") != _KIND or not isinstance(entries, dict):
            raise ValueError("not a Bessemer manifest")
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path}: missing; the checkpoint was not completed") from exc
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: damaged ({type(exc).__name__}); the checkpoint is unusable") from exc
    for rel, entry in entries.items():
        file = root / rel
        if not _inside(root, file):
            raise CheckpointError(f"{path}: names {rel!r} outside the checkpoint; the manifest is damaged")
        if not file.is_file():
            raise CheckpointError(f"{file}: missing; the checkpoint is damaged")
        size = file.stat().st_size
        if size != entry.get("size"):
            raise CheckpointError(
                f"{file}: {size} bytes, the manifest says {entry.get('size')}; it is damaged"
            )
    if not checksums:
        return
    rank, world = part
    names = sorted(entries)[rank::world]
    with ThreadPoolExecutor(_threads()) as pool:
        crcs = list(pool.map(lambda rel: crc32_file(root / rel), names))
    for rel, crc in zip(names, crcs):
        if crc != entries[rel].get("crc32"):
            raise CheckpointError(f"{root / rel}: checksum differs from the manifest; the file is damaged")


def _inside(root: Path, path: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True
