"""Megatron-compatible indexed datasets: token arrays in PREFIX.bin, lengths and offsets in PREFIX.idx.

`.idx` layout (little-endian): magic b"MMIDIDX\\x00\\x00", version <Q = 1, dtype code <B, <Q sequence_count,
<Q document_count, then int32 sequence_lengths, int64 sequence_pointers (byte offsets into .bin) and int64
document_indices (0, then the sequence count after each document). We write one sequence per document, so
document_indices is 0..n. Megatron-LM and MindSpeed-LLM read these files as they are, and we read theirs.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import numpy as np

from bessemer.errors import DataError

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
DTYPE_CODES = {
    np.dtype(np.uint8): 1,
    np.dtype(np.int8): 2,
    np.dtype(np.int16): 3,
    np.dtype(np.int32): 4,
    np.dtype(np.int64): 5,
    np.dtype(np.float64): 6,
    np.dtype(np.float32): 7,
    np.dtype(np.uint16): 8,
}
CODE_DTYPES = {code: dtype for dtype, code in DTYPE_CODES.items()}
_HEADER = struct.Struct("<9sQBQQ")


def best_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every token id fits (vocab under 65,500, as Megatron picks), else int32."""
    return np.dtype(np.uint16) if vocab_size < 65500 else np.dtype(np.int32)


def bin_path(prefix: str | Path) -> Path:
    return Path(f"{prefix}.bin")


def idx_path(prefix: str | Path) -> Path:
    return Path(f"{prefix}.idx")


def exists(prefix: str | Path) -> bool:
    """Whether both PREFIX.bin and PREFIX.idx exist."""
    return bin_path(prefix).is_file() and idx_path(prefix).is_file()


def mask_prefix(prefix: str | Path) -> str:
    """The sibling dataset holding the loss mask of PREFIX (one uint8 per token): PREFIX_mask.bin/.idx."""
    return f"{prefix}_mask"


def meta_path(prefix: str | Path) -> Path:
    """The JSON report `bessemer prepare` writes beside PREFIX.bin: PREFIX.meta.json."""
    return Path(f"{prefix}.meta.json")


def read_meta(prefix: str | Path) -> dict:
    """PREFIX.meta.json as a dict ({} when the dataset was not written by `bessemer prepare`)."""
    path = meta_path(prefix)
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}: not valid JSON ({exc}); rebuild the dataset with `bessemer prepare`"
        ) from exc


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


class IndexedDatasetWriter:
    """Append documents to PREFIX.bin; `finalize()` writes PREFIX.idx and moves both into place atomically."""

    def __init__(self, prefix: str | Path, dtype=np.uint16):
        self.prefix = Path(prefix)
        self.dtype = np.dtype(dtype)
        if self.dtype not in DTYPE_CODES:
            raise DataError(f"{self.prefix}: dtype {self.dtype} has no Megatron code; use uint16 or int32")
        self.prefix.parent.mkdir(parents=True, exist_ok=True)
        self._bin_tmp = _tmp(bin_path(self.prefix))
        self._idx_tmp = _tmp(idx_path(self.prefix))
        self._file = open(self._bin_tmp, "wb")  # noqa: SIM115 - closed in finalize/abort
        self._lengths: list[np.ndarray] = []
        self._done = False

    def add_document(self, tokens) -> None:
        """Append one document (a sequence of token ids)."""
        arr = np.asarray(tokens, dtype=self.dtype)
        self._file.write(arr.tobytes(order="C"))
        self._lengths.append(np.array([arr.size], dtype=np.int32))

    def add_documents(self, flat: np.ndarray, lengths: np.ndarray) -> None:
        """Append several documents given as one flat array and their lengths (the fast path)."""
        flat = np.asarray(flat, dtype=self.dtype)
        lengths = np.asarray(lengths, dtype=np.int32)
        if int(lengths.sum()) != flat.size:
            raise ValueError(f"lengths sum to {int(lengths.sum())} but {flat.size} tokens were given")
        # through the buffer protocol: a memory-mapped slice goes to the file without a copy in memory
        self._file.write(memoryview(np.ascontiguousarray(flat)).cast("B"))
        self._lengths.append(lengths)

    def add_dataset(self, prefix: str | Path) -> None:
        """Append every document of another indexed dataset with the same dtype (a merge)."""
        other = IndexedDataset(prefix)
        if other.dtype != self.dtype:
            raise DataError(
                f"{prefix}: dtype {other.dtype} differs from {self.dtype}; merge datasets of one tokenizer"
            )
        self._file.flush()
        with open(bin_path(prefix), "rb") as src:
            shutil.copyfileobj(src, self._file, 16 << 20)
        self._lengths.append(np.array(other.sequence_lengths, dtype=np.int32))

    @property
    def num_documents(self) -> int:
        return sum(a.size for a in self._lengths)

    def finalize(self) -> None:
        """Write the index and move PREFIX.bin and PREFIX.idx into place."""
        self.close()
        self.commit()

    def close(self) -> None:
        """Finish writing: the tokens and the index wait under temporary names for `commit` (or `abort`)."""
        if self._file.closed:
            return
        self._file.close()
        lengths = np.concatenate(self._lengths) if self._lengths else np.zeros(0, np.int32)
        self._lengths = [lengths]
        write_index(self._idx_tmp, self.dtype, lengths)

    def commit(self) -> None:
        """Move the closed PREFIX.bin and PREFIX.idx into place."""
        # the old index goes first: stopped in between, the dataset fails to open rather than pair old and new
        idx_path(self.prefix).unlink(missing_ok=True)
        os.replace(self._bin_tmp, bin_path(self.prefix))
        os.replace(self._idx_tmp, idx_path(self.prefix))
        self._done = True

    def abort(self) -> None:
        """Drop what was written; nothing appears under the final names."""
        self._file.close()
        self._bin_tmp.unlink(missing_ok=True)
        self._idx_tmp.unlink(missing_ok=True)
        self._done = True

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if self._done:
            return
        if exc_type is None:
            self.finalize()
        else:
            self.abort()


def write_index(path: str | Path, dtype, lengths: np.ndarray) -> None:
    """Write an .idx file for sequences of `lengths` tokens of `dtype` stored back to back, one per document."""
    dtype = np.dtype(dtype)
    lengths = np.asarray(lengths, dtype=np.int32)
    n = lengths.size
    pointers = np.zeros(n, dtype=np.int64)
    if n > 1:
        np.cumsum(lengths[:-1].astype(np.int64) * dtype.itemsize, out=pointers[1:])
    doc_idx = np.arange(n + 1, dtype=np.int64)
    with open(path, "wb") as f:
        f.write(_HEADER.pack(MAGIC, VERSION, DTYPE_CODES[dtype], n, n + 1))
        f.write(lengths.tobytes())
        f.write(pointers.tobytes())
        f.write(doc_idx.tobytes())


def merge(prefixes: list[str | Path], out_prefix: str | Path) -> None:
    """Concatenate indexed datasets (same dtype) into one, in the given order."""
    if not prefixes:
        raise DataError("nothing to merge; pass at least one dataset prefix")
    first = IndexedDataset(prefixes[0])
    with IndexedDatasetWriter(out_prefix, first.dtype) as w:
        for p in prefixes:
            w.add_dataset(p)


class IndexedDataset:
    """Memory-mapped reader of PREFIX.bin / PREFIX.idx; `ds[i]` is document i as a numpy array."""

    def __init__(self, prefix: str | Path):
        self.prefix = Path(prefix)
        if not exists(self.prefix):
            missing = bin_path(self.prefix) if not bin_path(self.prefix).is_file() else idx_path(self.prefix)
            raise DataError(
                f"{missing}: not found; run `bessemer prepare --out {self.prefix}` to build the dataset"
            )
        ipath = idx_path(self.prefix)
        with open(ipath, "rb") as f:
            head = f.read(_HEADER.size)
        if len(head) < _HEADER.size or head[:9] != MAGIC:
            raise DataError(f"{ipath}: not a Megatron index (bad magic); rebuild it with `bessemer prepare`")
        _, version, code, n_seq, n_doc = _HEADER.unpack(head)
        if version != VERSION:
            raise DataError(f"{ipath}: index version {version} is not supported (only {VERSION}); rebuild it")
        if code not in CODE_DTYPES:
            raise DataError(f"{ipath}: unknown dtype code {code}; rebuild it with `bessemer prepare`")
        self.dtype = CODE_DTYPES[code]
        need = _HEADER.size + n_seq * 12 + n_doc * 8
        if ipath.stat().st_size < need:
            raise DataError(f"{ipath}: truncated ({ipath.stat().st_size} of {need} bytes); rebuild it")
        self._idx = np.memmap(ipath, dtype=np.uint8, mode="r")
        off = _HEADER.size
        self.sequence_lengths = np.frombuffer(self._idx, dtype=np.int32, count=n_seq, offset=off)
        off += n_seq * 4
        self.sequence_pointers = np.frombuffer(self._idx, dtype=np.int64, count=n_seq, offset=off)
        off += n_seq * 8
        self.document_indices = np.frombuffer(self._idx, dtype=np.int64, count=n_doc, offset=off)
        bpath = bin_path(self.prefix)
        size = bpath.stat().st_size
        expected = int(self.sequence_lengths.astype(np.int64).sum()) * self.dtype.itemsize
        if (
            n_seq
            and int(self.sequence_pointers[-1]) + int(self.sequence_lengths[-1]) * self.dtype.itemsize > size
        ):
            raise DataError(
                f"{bpath}: shorter than its index says ({size} bytes); rebuild it with `bessemer prepare`"
            )
        self.num_tokens = expected // self.dtype.itemsize
        self._bin = np.memmap(bpath, dtype=self.dtype, mode="r") if size else np.zeros(0, self.dtype)

    def __len__(self) -> int:
        return self.sequence_lengths.size

    def __getitem__(self, i: int) -> np.ndarray:
        if not -len(self) <= i < len(self):
            raise IndexError(f"document {i} out of range for {len(self)} documents")
        return self.get(i)

    def get(self, i: int, offset: int = 0, length: int | None = None) -> np.ndarray:
        """Tokens [offset, offset+length) of sequence i (to its end when length is None)."""
        i = int(i) % len(self) if i < 0 else int(i)
        n = int(self.sequence_lengths[i])
        stop = n if length is None else min(n, offset + length)
        start = int(self.sequence_pointers[i]) // self.dtype.itemsize
        return self._bin[start + offset : start + stop]

    @property
    def tokens(self) -> np.ndarray:
        """All tokens, back to back, as one memory-mapped array."""
        return self._bin
