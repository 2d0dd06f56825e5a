"""Lazy, one-tensor-at-a-time readers for Hugging Face weight folders and Bessemer checkpoints.

Every reader lists tensor names with their dtype and shape before reading any data, and `get(name)` returns
one tensor. Hugging Face folders may hold sharded safetensors (with model.safetensors.index.json), a single
model.safetensors, or pytorch_model*.bin pickles (read with torch.load(weights_only=True, mmap=True)).
Bessemer checkpoints hold either model/ safetensors (written by convert) or state/ DCP shards (training).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import zipfile
from pathlib import Path

import torch

from bessemer.errors import ConversionError
from bessemer.hf.safetensors_io import INDEX_NAME, TensorInfo, read_header, read_tensor

log = logging.getLogger(__name__)

BIN_INDEX_NAME = "pytorch_model.bin.index.json"
# a .bin is re-opened after this many bytes were read from it, so its memory map never stays resident whole
_BIN_REMAP_BYTES = 512 * 1024 * 1024


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


class WeightReader:
    """Names, dtypes and shapes of stored tensors, and one tensor at a time on request."""

    where: Path

    def infos(self) -> dict[str, TensorInfo]:
        raise NotImplementedError

    def get(self, name: str) -> torch.Tensor:
        raise NotImplementedError

    def close(self) -> None:
        """Release open files and maps."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class SafetensorsReader(WeightReader):
    """A folder of safetensors files: shards named by an index, or every *.safetensors file in it."""

    def __init__(self, folder: Path, index_name: str = INDEX_NAME):
        self.where = Path(folder)
        self._infos: dict[str, TensorInfo] = {}
        self._fds: dict[Path, int] = {}
        self._headers: dict[Path, dict[str, TensorInfo]] = {}
        index = self.where / index_name
        if index.is_file():
            for name, file in sorted(_read_weight_map(index).items(), key=lambda kv: kv[1]):
                path = confined(self.where, file, index)
                if not path.is_file():
                    raise ConversionError(
                        f"{path}: shard named in {index.name} (for {name!r}) is missing; download it again"
                    )
                headers = self._header(path)
                if name not in headers:
                    raise ConversionError(
                        f"{path}: has no tensor {name!r} although {index.name} says so; download it again"
                    )
                self._infos[name] = headers[name]
        else:
            for path in _unindexed_safetensors(self.where):
                confined(self.where, path.name, path)
                for name, info in self._header(path).items():
                    if name in self._infos:  # which copy is meant? transformers would take either, silently
                        raise ConversionError(
                            f"{path}: tensor {name!r} is also in {self._infos[name].file.name}; without "
                            f"{index_name} each tensor must be in one file: remove the stray file"
                        )
                    self._infos[name] = info
        self._headers.clear()

    def _header(self, path: Path) -> dict[str, TensorInfo]:
        if path not in self._headers:
            self._headers[path] = read_header(path)
        return self._headers[path]

    def infos(self) -> dict[str, TensorInfo]:
        return self._infos

    def get(self, name: str) -> torch.Tensor:
        info = self._infos[name]
        fd = self._fds.get(info.file)
        if fd is None:
            fd = self._fds[info.file] = os.open(info.file, os.O_RDONLY)
        return read_tensor(info, fd)

    def read_into(self, name: str, target: torch.Tensor) -> None:
        """Fill `target` (of the stored shape) with the stored tensor: a contiguous CPU target of the stored
        dtype is read into directly, with no temporary; any other is copied into (converting the dtype)."""
        info = self._infos[name]
        if target.device.type != "cpu" or target.dtype != info.dtype or not target.is_contiguous():
            target.copy_(self.get(name))
            return
        fd = self._fds.get(info.file)
        if fd is None:
            fd = self._fds[info.file] = os.open(info.file, os.O_RDONLY)
        read_tensor(info, fd, into=target)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


class BinReader(WeightReader):
    """pytorch_model*.bin pickles, loaded with weights_only=True and memory-mapped."""

    def __init__(self, folder: Path):
        self.where = Path(folder)
        index = self.where / BIN_INDEX_NAME
        if index.is_file():
            files: dict[str, list[str]] = {}
            for name, file in _read_weight_map(index).items():
                files.setdefault(file, []).append(name)
            paths = [confined(self.where, f, index) for f in sorted(files)]
            for path in paths:
                if not path.is_file():
                    raise ConversionError(
                        f"{path}: shard named in {BIN_INDEX_NAME} is missing; download it again"
                    )
        else:
            paths = [confined(self.where, p.name, p) for p in sorted(self.where.glob("pytorch_model*.bin"))]
        self._infos: dict[str, TensorInfo] = {}
        self._loaded: dict[Path, dict[str, torch.Tensor]] = {}
        self._read_since_map: dict[Path, int] = {}
        for path in paths:
            for name, t in self._load(path).items():
                self._infos[name] = TensorInfo(path, t.dtype, tuple(t.shape))
            self._loaded.pop(path, None)  # keep no map open until data is asked for

    def _load(self, path: Path) -> dict[str, torch.Tensor]:
        if path in self._loaded:
            return self._loaded[path]
        with open(path, "rb") as f:
            magic = f.read(4)
        try:
            if zipfile.is_zipfile(path):
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            elif magic.startswith(b"PK"):
                raise ConversionError(f"{path}: truncated zip archive; download the file again")
            else:
                # the legacy (pre-1.6) pickle format cannot be memory-mapped; it must be read whole
                log.warning("%s: legacy torch.save format, read into memory whole", path)
                state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            if "weights only" not in str(exc).lower():
                raise ConversionError(
                    f"{path}: damaged pickle ({_first_line(exc)}); download the file again"
                ) from exc
            raise ConversionError(
                f"{path}: refused: its pickle needs code to load, which weights_only=True forbids; "
                "re-save it as a plain dict of tensors (or safetensors) where you trust the code"
            ) from exc
        except (RuntimeError, EOFError, OSError, ValueError) as exc:
            raise ConversionError(
                f"{path}: not a readable torch checkpoint ({_first_line(exc)}); download it again"
            ) from exc
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ConversionError(
                f"{path}: does not hold a flat dict of tensors; save model.state_dict() instead"
            )
        self._loaded[path] = state
        self._read_since_map[path] = 0
        return state

    def infos(self) -> dict[str, TensorInfo]:
        return self._infos

    def get(self, name: str) -> torch.Tensor:
        info = self._infos[name]
        # only one file mapped at a time: reading moves through the shards in order
        for other in [p for p in self._loaded if p != info.file]:
            del self._loaded[other]
        t = self._load(info.file)[name].clone(memory_format=torch.contiguous_format)
        self._read_since_map[info.file] += t.nbytes
        if self._read_since_map[info.file] > _BIN_REMAP_BYTES:
            self._loaded.pop(info.file, None)  # drop the map; touched pages leave the resident set
        return t

    def close(self) -> None:
        self._loaded.clear()


class DCPReader(WeightReader):
    """The model tensors of a training checkpoint's state/ (torch.distributed.checkpoint), one at a time.

    Metadata and items are read through bessemer.checkpoint.safe_dcp, which never unpickles code.
    """

    def __init__(self, state_dir: Path, prefix: str = "model."):
        from bessemer.checkpoint import safe_dcp

        self.where = Path(state_dir)
        self._prefix = prefix
        self._infos = {
            name: TensorInfo(self.where, dtype, shape)
            for name, (dtype, shape) in safe_dcp.dcp_dtypes(self.where, prefix).items()
        }

    def infos(self) -> dict[str, TensorInfo]:
        return self._infos

    def get(self, name: str) -> torch.Tensor:
        from bessemer.checkpoint import safe_dcp

        info = self._infos[name]
        out = torch.empty(info.shape, dtype=info.dtype)
        safe_dcp.load({self._prefix.rstrip("."): {name: out}}, self.where)
        return out


def _unindexed_safetensors(folder: Path) -> list[Path]:
    """Without an index: model.safetensors alone if present, else every shard except Mistral's
    consolidated.safetensors (the same weights again, under Meta's own names)."""
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    return [p for p in sorted(folder.glob("*.safetensors")) if not p.name.startswith("consolidated")]


def _read_weight_map(index: Path) -> dict[str, str]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError, RecursionError) as exc:
        raise ConversionError(
            f"{index}: not a valid index (no readable weight_map: {type(exc).__name__}); download it again"
        ) from exc
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise ConversionError(f"{index}: weight_map must map tensor names to file names; download it again")
    return weight_map


def confined(folder: Path, name: str, named_by: Path) -> Path:
    """`folder/name`, refused unless it is a plain relative name that stays inside `folder` once resolved.

    Shard names come from an index someone else wrote: `../x`, `/etc/...` or a symlink leading out of the
    model folder would make us read (and echo) files that are not part of the model.
    """
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise ConversionError(
            f"{named_by}: names a weight file outside the model folder; shard names must be plain file names"
        )
    path = Path(folder) / rel
    try:
        inside = path.resolve().is_relative_to(Path(folder).resolve())
    except (OSError, RuntimeError) as exc:  # symlink loop
        raise ConversionError(f"{path}: cannot be resolved ({type(exc).__name__}); fix the link") from exc
    if not inside:
        raise ConversionError(
            f"{path}: links outside the model folder; copy the file into {folder} instead of linking it"
        )
    return path


def open_hf_weights(folder: str | Path) -> WeightReader:
    """A reader for the weights in a Hugging Face model folder (safetensors preferred over .bin)."""
    folder = Path(folder)
    if (folder / INDEX_NAME).is_file() or any(folder.glob("*.safetensors")):
        return SafetensorsReader(folder)
    if (folder / BIN_INDEX_NAME).is_file() or any(folder.glob("pytorch_model*.bin")):
        return BinReader(folder)
    raise ConversionError(
        f"{folder}: no weights (model*.safetensors or pytorch_model*.bin); download the model's weight files"
    )


def open_checkpoint_weights(ckpt: str | Path) -> WeightReader:
    """A reader for a Bessemer checkpoint's weights: model/ safetensors or state/ DCP shards."""
    from bessemer.checkpoint.layout import STATE_DIR, WEIGHTS_DIR

    ckpt = Path(ckpt)
    if (ckpt / WEIGHTS_DIR).is_dir() and any((ckpt / WEIGHTS_DIR).glob("*.safetensors")):
        return SafetensorsReader(ckpt / WEIGHTS_DIR)
    if (ckpt / STATE_DIR / ".metadata").is_file():
        return DCPReader(ckpt / STATE_DIR)
    raise ConversionError(
        f"{ckpt}: no weights ({WEIGHTS_DIR}/*.safetensors or {STATE_DIR}/.metadata); the checkpoint is incomplete"
    )
