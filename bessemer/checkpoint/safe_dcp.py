"""torch.distributed.checkpoint reads that cannot run code.

DCP keeps its `.metadata` as a plain pickle and loads non-tensor items ("bytes": optimizer hyperparameters)
with `torch.load(weights_only=False)`; a checkpoint from someone else could run anything on either path.
Here the metadata goes through an unpickler that admits only DCP's own metadata classes, torch sizes,
dtypes and layouts, and every byte item loads with `weights_only=True`. Every Bessemer path that opens
`state/` (generate, chat, serve, eval, convert --to-hf, train --finetune and --resume) reads through this module.
"""

from __future__ import annotations

import io
import pickle
import re
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint._traverse import set_element  # what DefaultLoadPlanner itself uses
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorStorageMetadata,
)

from bessemer.checkpoint.files import single_process_quiet
from bessemer.errors import CheckpointError

METADATA = ".metadata"
_DCP_METADATA = "torch.distributed.checkpoint.metadata"
_ALLOWED: dict[str, set[str]] = {
    _DCP_METADATA: {
        "Metadata",
        "MetadataIndex",
        "StorageMeta",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "ChunkStorageMetadata",
        "TensorProperties",
        "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch": {"Size"},  # dtypes are checked by value below
    "torch.serialization": {"_get_layout"},  # maps a layout's name to torch.strided and friends
    "pathlib": {"PosixPath", "PurePosixPath"},  # StorageMeta.checkpoint_id
    "pathlib._local": {"PosixPath", "PurePosixPath"},  # the same classes on Python 3.13
    "collections": {"OrderedDict"},
}
# shard files DCP writes: __0_0.distcp; a name with a separator could reach outside the checkpoint
_SHARD_NAME = re.compile(r"^[A-Za-z0-9_.-]+\.distcp$")


class _MetadataUnpickler(pickle.Unpickler):
    """An unpickler that builds DCP metadata and nothing else."""

    def __init__(self, file, where: Path):
        super().__init__(file)
        self.where = where

    def find_class(self, module: str, name: str):
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if name in _ALLOWED.get(module, ()):
            return super().find_class(module, name)
        raise CheckpointError(
            f"{self.where}: refused: it asks to load {module}.{name}, which DCP metadata never holds; "
            "the file is damaged or malicious, do not use this checkpoint"
        )

    def persistent_load(self, pid):
        raise CheckpointError(f"{self.where}: refused: persistent ids are not DCP metadata; do not use it")


def read_metadata(state_dir: str | Path) -> Metadata:
    """The DCP metadata of `state_dir`, read without running code and checked for shape."""
    path = Path(state_dir) / METADATA
    try:
        with open(path, "rb") as f:
            meta = _MetadataUnpickler(f, path).load()
    except CheckpointError:
        raise
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path}: missing; the checkpoint is incomplete") from exc
    except Exception as exc:  # truncated or garbled pickle: EOFError, UnpicklingError, ValueError ...
        raise CheckpointError(
            f"{path}: damaged DCP metadata ({type(exc).__name__}); the checkpoint is incomplete"
        ) from exc
    _check_metadata(meta, path)
    return meta


def _check_metadata(meta, path: Path) -> None:
    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{path}: damaged DCP metadata ({what}); the checkpoint is unusable")

    if not isinstance(meta, Metadata) or not isinstance(meta.state_dict_metadata, dict):
        raise bad("not a Metadata object")
    for key, md in meta.state_dict_metadata.items():
        if not isinstance(key, str) or not isinstance(md, (TensorStorageMetadata, BytesStorageMetadata)):
            raise bad(f"entry {key!r}")
    if not isinstance(meta.storage_data, dict):
        raise bad("no storage map")
    for index, info in meta.storage_data.items():
        if not isinstance(index, MetadataIndex) or not isinstance(info, _StorageInfo):
            raise bad("storage map entry")
        if not isinstance(info.relative_path, str) or not _SHARD_NAME.match(info.relative_path):
            raise bad(
                f"shard name {str(info.relative_path)[:60]!r} for {index.fqn!r} is not a plain .distcp name"
            )
        if not all(isinstance(v, int) and v >= 0 for v in (info.offset, info.length)):
            raise bad(f"byte range of {index.fqn!r}")
    if meta.storage_meta is not None and not isinstance(meta.storage_meta, StorageMeta):
        raise bad("storage_meta")
    folder = path.parent.resolve()
    for name in {info.relative_path for info in meta.storage_data.values()}:
        shard = path.parent / name
        try:
            outside = shard.is_symlink() and not shard.resolve().is_relative_to(folder)
        except (OSError, RuntimeError):  # a symlink loop
            outside = True
        if outside:
            raise CheckpointError(
                f"{shard}: links outside the checkpoint; copy the file in instead of linking it"
            )


class SafeReader(dcp.FileSystemReader):
    """FileSystemReader whose metadata comes from the restricted unpickler above."""

    def read_metadata(self, *args) -> Metadata:
        # no **kwargs: DCP then never falls back to per-rank metadata files, which Bessemer does not write
        meta = read_metadata(self.path)
        if meta.storage_meta is None:
            meta.storage_meta = StorageMeta()
        meta.storage_meta.load_id = self.load_id
        return meta


class SafeLoadPlanner(DefaultLoadPlanner):
    """DefaultLoadPlanner whose non-tensor items load with weights_only=True (plain numbers, strings, tuples)."""

    def __init__(self, where: Path, **kwargs):
        super().__init__(**kwargs)
        self.where = where

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        fqn = read_item.dest_index.fqn
        try:
            obj = torch.load(value, weights_only=True)
        except Exception as exc:  # UnpicklingError for forbidden globals, others for garbage
            raise CheckpointError(
                f"{self.where}: refused item {fqn!r}: it is not plain data ({type(exc).__name__}); "
                "the checkpoint is damaged or malicious, do not use it"
            ) from exc
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[fqn], obj)
        else:
            self.state_dict[fqn] = obj


def load(state: dict, state_dir: str | Path, allow_partial: bool = False) -> None:
    """Fill `state` (any nesting, plain tensors or DTensors) in place from the DCP shards in `state_dir`."""
    state_dir = Path(state_dir)
    try:
        with single_process_quiet():
            dcp.load(
                state,
                storage_reader=SafeReader(str(state_dir)),
                planner=SafeLoadPlanner(state_dir, allow_partial_load=allow_partial),
            )
    except CheckpointError:
        raise
    except (Exception, CheckpointException) as exc:  # CheckpointException is a BaseException
        cause = _bessemer_cause(exc)
        if cause is not None:
            raise cause from exc
        inner = _inner(exc)
        if isinstance(inner, pickle.UnpicklingError):
            raise CheckpointError(
                f"{state_dir}: refused: a shard item needs code to load, which weights_only=True forbids; "
                "the checkpoint is damaged or malicious, do not use it"
            ) from exc
        raise CheckpointError(
            f"{state_dir}: could not load ({type(inner).__name__}: {_first_line(inner)}); "
            "the checkpoint is damaged or of another model"
        ) from exc


def _bessemer_cause(exc: BaseException) -> CheckpointError | None:
    """DCP wraps each rank's failure in a CheckpointException; surface our own one-line error if it is one."""
    failures = exc.failures if isinstance(exc, CheckpointException) else {}
    for failure in failures.values():
        inner = failure[0] if isinstance(failure, tuple) else failure
        if isinstance(inner, CheckpointError):
            return inner
    seen = exc.__cause__ or exc.__context__
    return seen if isinstance(seen, CheckpointError) else None


def _inner(exc: BaseException) -> BaseException:
    """The first rank's own exception inside DCP's CheckpointException (else `exc` itself)."""
    if isinstance(exc, CheckpointException):
        for failure in exc.failures.values():
            return failure[0] if isinstance(failure, tuple) else failure
    return exc


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:200]


def dcp_shapes(state_dir: str | Path, prefix: str) -> dict[str, tuple[int, ...]]:
    """Global shapes of the tensors under `prefix` (e.g. "model.") in a DCP checkpoint."""
    meta = read_metadata(state_dir)
    return {
        k[len(prefix) :]: tuple(v.size)
        for k, v in meta.state_dict_metadata.items()
        if k.startswith(prefix) and isinstance(v, TensorStorageMetadata)
    }


def dcp_dtypes(state_dir: str | Path, prefix: str) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """(dtype, shape) of the tensors under `prefix`."""
    meta = read_metadata(state_dir)
    return {
        k[len(prefix) :]: (v.properties.dtype, tuple(v.size))
        for k, v in meta.state_dict_metadata.items()
        if k.startswith(prefix) and isinstance(v, TensorStorageMetadata)
    }
