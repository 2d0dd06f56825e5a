"""Streaming safetensors: read one tensor at a time with plain file reads, write shards tensor by tensor.

The format is an 8-byte little-endian header length, a JSON header naming each tensor's dtype, shape and byte
range, then the raw bytes. Reading with `pread` instead of a memory map keeps the resident set to the tensor in
hand (a mapped 10 GB shard would count fully once touched), and writing a shard needs only its plan (names,
dtypes, shapes) up front, so no shard is ever assembled in memory.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from bessemer.errors import ConversionError
from bessemer.json_object import parse_json_object

DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "U8": torch.uint8,
    "I8": torch.int8,
    "I16": torch.int16,
    "I32": torch.int32,
    "I64": torch.int64,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
INDEX_NAME = "model.safetensors.index.json"
_MAX_HEADER = 100 * 1024 * 1024  # the limit the safetensors library enforces
_MAX_DIMS = 16
_COPY_CHUNK = 64 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    """Where one stored tensor lives: file, dtype, shape and (for safetensors) its absolute byte range."""

    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int = -1  # absolute byte offset in `file`; -1 when the bytes are not addressable (.bin, DCP)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def read_header(path: Path) -> dict[str, TensorInfo]:
    """The tensors of one safetensors file, validated as strictly as the `safetensors` library does.

    The header must be a JSON object of entries {dtype, shape, data_offsets} whose byte ranges, in order,
    tile the data section exactly: no gap, no overlap (two tensors sharing bytes), nothing after the end.
    Anything else is refused with one line naming the file and the tensor.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise ConversionError(f"{path}: truncated safetensors file ({size} bytes); download it again")
            (n,) = struct.unpack("<Q", raw)
            if n > _MAX_HEADER or 8 + n > size:
                raise ConversionError(
                    f"{path}: truncated or not a safetensors file (its header length does not fit the file "
                    f"of {size} bytes); download it again"
                )
            text = f.read(n)
    except OSError as exc:
        raise ConversionError(f"{path}: cannot be read ({exc.strerror or type(exc).__name__})") from exc
    header = parse_json_object(
        text, f"{path}: safetensors header", "the file is damaged, download it again", ConversionError
    )
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
    ):
        raise ConversionError(f"{path}: __metadata__ must map strings to strings; the file is damaged")
    base = 8 + n
    out: dict[str, TensorInfo] = {}
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        info, start, end = _entry(path, name, entry, base)
        spans.append((start, end, name))
        out[name] = info
    _check_tiling(path, spans, size - base)
    return out


def _entry(path: Path, name: str, entry, base: int) -> tuple[TensorInfo, int, int]:
    """One header entry checked for types and size; returns (info, start, end) relative to the data."""

    def bad(what: str) -> ConversionError:
        return ConversionError(
            f"{path}: tensor {name[:100]!r} {what}; the file is damaged, download it again"
        )

    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise bad("has a malformed header entry")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise bad(f"has an unknown dtype (known: {', '.join(DTYPES)})")
    if not isinstance(shape, list) or len(shape) > _MAX_DIMS or not all(_whole(d) for d in shape):
        raise bad("has a malformed shape")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_whole(x) for x in offsets)):
        raise bad("has malformed data_offsets")
    start, end = offsets
    if end < start:
        raise bad("ends before it starts")
    info = TensorInfo(path, DTYPES[dtype], tuple(shape), base + start)
    if end - start != info.nbytes:
        raise bad(f"spans {end - start} bytes, but its dtype and shape need {info.nbytes}")
    return info, start, end


def _whole(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _check_tiling(path: Path, spans: list[tuple[int, int, str]], data_size: int) -> None:
    """The byte ranges, sorted, must follow one another from 0 to the end of the file exactly."""
    position = 0
    for start, end, name in sorted(spans):
        if start != position:
            what = "overlaps the tensor before it" if start < position else "leaves a gap before it"
            raise ConversionError(
                f"{path}: tensor {name[:100]!r} {what} (bytes {start}-{end}); the file is damaged or crafted, "
                "download it again"
            )
        position = end
    if position != data_size:
        if position > data_size:
            raise ConversionError(
                f"{path}: truncated safetensors file: {data_size} data bytes, its header needs {position}; "
                "download it again"
            )
        raise ConversionError(
            f"{path}: {data_size - position} bytes after the last tensor that no tensor covers; "
            "the file is damaged, download it again"
        )


def read_tensor(info: TensorInfo, fd: int | None = None, into: torch.Tensor | None = None) -> torch.Tensor:
    """Read one tensor's bytes from a safetensors file into a fresh CPU tensor, or straight into `into` (a
    contiguous CPU tensor of the stored dtype and shape: no second copy of the tensor is held)."""
    if into is not None:
        out = into.reshape(-1).view(torch.uint8)
    else:
        out = torch.empty(info.nbytes, dtype=torch.uint8)
    view = memoryview(out.numpy())
    own = fd is None
    if own:
        fd = os.open(info.file, os.O_RDONLY)
    try:
        done = 0
        while done < info.nbytes:
            got = os.preadv(fd, [view[done:]], info.offset + done)
            if got <= 0:
                raise ConversionError(
                    f"{info.file}: ended early while reading a tensor; the file is truncated, download it again"
                )
            done += got
    finally:
        if own:
            os.close(fd)
    if into is not None:
        return into
    return out.view(info.dtype).view(info.shape) if info.shape else out.view(info.dtype).reshape(())


def range_finite(path: Path, offset: int, nbytes: int, dtype: torch.dtype) -> bool:
    """Whether the `dtype` values stored in bytes [offset, offset + nbytes) of `path` hold no NaN or Inf,
    read a few MB at a time (called on a worker thread: the reads and numpy release the GIL)."""
    if dtype not in _NONFINITE_BITS:
        return True
    buf = bytearray(min(_CHECK_CHUNK, nbytes))
    view = memoryview(buf)
    fd = os.open(path, os.O_RDONLY)
    try:
        done = 0
        while done < nbytes:
            got = os.preadv(fd, [view[: min(len(buf), nbytes - done)]], offset + done)
            if got <= 0:
                raise ConversionError(f"{path}: ended early while reading a tensor; the file is truncated")
            whole = got - got % dtype.itemsize
            if not all_finite(view[:whole], dtype):
                return False
            done += whole
    finally:
        os.close(fd)
    return True


def copy_bytes(src: Path, offset: int, nbytes: int, dst: BinaryIO) -> None:
    """Copy a byte range of `src` to the current position of `dst` (in-kernel where the system allows)."""
    dst.flush()
    out_fd = dst.fileno()
    with open(src, "rb") as f:
        in_fd = f.fileno()
        done = 0
        try:
            while done < nbytes:
                n = os.copy_file_range(in_fd, out_fd, nbytes - done, offset + done)
                if n <= 0:
                    break
                done += n
        except (AttributeError, OSError):
            pass  # no copy_file_range here (old kernel, other file systems): copy through user space
        if done < nbytes:
            os.lseek(out_fd, 0, os.SEEK_END)
            f.seek(offset + done)
            while done < nbytes:
                chunk = f.read(min(_COPY_CHUNK, nbytes - done))
                if not chunk:
                    raise ConversionError(f"{src}: ended early while copying; the file is truncated")
                os.write(out_fd, chunk)
                done += len(chunk)
    dst.seek(0, os.SEEK_END)


# per float dtype: (the integer dtype of its bits, its exponent mask): all exponent bits set is Inf or NaN
# (float8_e4m3fn has no Inf: its NaN is the exponent and mantissa bits all set, mask 0x7F)
_NONFINITE_BITS = {
    torch.float64: (np.int64, 0x7FF0000000000000),
    torch.float32: (np.int32, 0x7F800000),
    torch.float16: (np.int16, 0x7C00),
    torch.bfloat16: (np.int16, 0x7F80),
    torch.float8_e5m2: (np.uint8, 0x7C),
    torch.float8_e4m3fn: (np.uint8, 0x7F),
}


_CHECK_CHUNK = 8 * 1024 * 1024


def all_finite(raw: memoryview | bytes, dtype: torch.dtype) -> bool:
    """Whether the little-endian values of `dtype` in `raw` hold no NaN or Inf (True for non-float dtypes).

    Tests the exponent bits with integer numpy ops, several times faster than torch.isfinite on bf16, a few
    MB at a time so the scratch array stays small."""
    if dtype not in _NONFINITE_BITS:
        return True
    bits, mask = _NONFINITE_BITS[dtype]
    values = np.frombuffer(raw, dtype=bits)
    step = _CHECK_CHUNK // values.itemsize
    scratch = np.empty(min(step, values.size), dtype=bits)
    for start in range(0, values.size, step):
        part = values[start : start + step]
        out = scratch[: part.size]
        np.bitwise_and(part, mask, out=out)
        if int(out.max()) == mask:
            return False
    return True


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a tensor, without a copy when it is already contiguous."""
    t = t.detach().contiguous().cpu()
    return memoryview(t.reshape(-1).view(torch.uint8).numpy())


@dataclass
class OutTensor:
    """One tensor of an output checkpoint: its name, dtype and shape, and how to produce its bytes."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    write: Callable[[BinaryIO], None]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def parse_size(text: str | int) -> int:
    """Bytes from '5GB' (decimal, as Hugging Face counts), '512MiB', '1000000' and the like."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*", str(text), re.IGNORECASE)
    if not m:
        raise ConversionError(f"shard size {text!r} is not a size; write it like 5GB, 500MB or 2GiB")
    num, unit, binary = float(m.group(1)), m.group(2).upper(), m.group(3)
    power = "KMGT".index(unit) + 1 if unit else 0
    size = int(num * (1024 if binary else 1000) ** power)
    if size < 1:
        raise ConversionError(f"shard size {text!r} is not positive; write it like 5GB, 500MB or 2GiB")
    return size


def plan_shards(tensors: list[OutTensor], shard_size: int) -> list[list[OutTensor]]:
    """Split tensors, in order, into shards of at most `shard_size` bytes (a bigger tensor gets its own)."""
    shards: list[list[OutTensor]] = []
    current: list[OutTensor] = []
    used = 0
    for t in tensors:
        if current and used + t.nbytes > shard_size:
            shards.append(current)
            current, used = [], 0
        current.append(t)
        used += t.nbytes
    if current:
        shards.append(current)
    return shards


def _header_bytes(tensors: Iterable[OutTensor]) -> bytes:
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for t in tensors:
        header[t.name] = {
            "dtype": DTYPE_NAMES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + t.nbytes],
        }
        offset += t.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # keep the data 8-byte aligned, as the reference writer does
    return struct.pack("<Q", len(raw)) + raw


def write_sharded(folder: Path, tensors: list[OutTensor], shard_size: int, prefix: str = "model") -> dict:
    """Write `tensors` as PREFIX-0000k-of-0000n.safetensors shards plus PREFIX.safetensors.index.json.

    Each tensor's bytes are produced by its `write` callback only when its turn comes, so memory holds one
    tensor at a time. Returns the index written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ConversionError(f"tensor {dup!r} is written twice; the adapter's key table is wrong")
    shards = plan_shards(tensors, shard_size)
    weight_map: dict[str, str] = {}
    for k, shard in enumerate(shards, 1):
        fname = f"{prefix}-{k:05d}-of-{len(shards):05d}.safetensors"
        path = folder / fname
        header = _header_bytes(shard)
        with open(path, "wb") as f:
            f.write(header)
            for t in shard:
                start = f.tell()
                t.write(f)
                f.seek(0, os.SEEK_END)
                if f.tell() - start != t.nbytes:
                    raise ConversionError(
                        f"{path}: tensor {t.name!r} wrote {f.tell() - start} bytes, expected {t.nbytes}; "
                        "this is a bug in the converter"
                    )
                weight_map[t.name] = fname
    index = {
        "metadata": {"total_size": sum(t.nbytes for t in tensors)},
        "weight_map": dict(sorted(weight_map.items())),
    }
    (folder / f"{prefix}.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return index
