"""Tokenize corpora into indexed datasets, in parallel, with the same bytes for any number of workers.

The main process reads rows (readers.py) and hands chunks of them, in order, to worker processes that encode
them (handlers.py, batched through the fast tokenizer); results are written back in input order, and at most a
few chunks per worker are in flight, so memory stays flat however large the corpus.

Outputs for PREFIX:
- PREFIX.bin / PREFIX.idx   token ids, Megatron layout (uint16 when the vocabulary fits, else int32);
- PREFIX_mask.bin / .idx    SFT handlers only: one uint8 per token, 1 where the loss is taken (assistant answers);
- PREFIX.meta.json          the report (documents read / written / skipped by reason, tokens, lengths,
                            truncations), the tokenizer's fingerprint, folder and vocabulary size, dtype, handler,
                            template and command line.
With `shard_size`, documents go to PREFIX_00000, PREFIX_00001, ... (each a complete dataset with its own meta.json)
and PREFIX.meta.json lists them; `merge` joins prepared datasets into one.
"""

from __future__ import annotations

import itertools
import json
import logging
import multiprocessing as mp
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bessemer.data import indexed
from bessemer.data.handlers import Handler, Skip
from bessemer.data.indexed import IndexedDatasetWriter, best_dtype, mask_prefix, meta_path, read_meta
from bessemer.data.readers import ReadStats, iter_rows
from bessemer.errors import DataError

log = logging.getLogger(__name__)

CHUNK_ROWS = 256
IN_FLIGHT_PER_WORKER = 4


@dataclass
class PrepareOptions:
    """What `prepare` does with each row; sent to every worker process."""

    tokenizer: str
    handler: str = "pretrain"
    template: str | None = None
    fields: tuple[str, ...] = ("text",)
    append_eod: bool = False
    max_length: int | None = None
    skip_bad: bool = False


@dataclass
class Chunk:
    """Encoded documents of one chunk of rows, flattened for cheap transfer between processes."""

    rows: int
    ids: np.ndarray
    lengths: np.ndarray
    mask: np.ndarray | None
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (reason, location)
    truncated: int = 0


@dataclass
class Report:
    """Counts of one `prepare` run; written into PREFIX.meta.json."""

    documents_read: int = 0
    documents_written: int = 0
    skipped: Counter = field(default_factory=Counter)
    first_skipped: dict = field(default_factory=dict)
    tokens: int = 0
    max_length: int = 0
    truncated: int = 0
    max_token_id: int = -1

    @property
    def mean_length(self) -> float:
        return self.tokens / self.documents_written if self.documents_written else 0.0

    def add(self, chunk: Chunk) -> None:
        self.documents_read += chunk.rows
        self.documents_written += chunk.lengths.size
        self.tokens += int(chunk.ids.size)
        if chunk.lengths.size:
            self.max_length = max(self.max_length, int(chunk.lengths.max()))
        if chunk.ids.size:
            self.max_token_id = max(self.max_token_id, int(chunk.ids.max()))
        self.truncated += chunk.truncated
        for reason, loc in chunk.skipped:
            self.skipped[reason] += 1
            self.first_skipped.setdefault(reason, loc)

    def as_dict(self) -> dict:
        return {
            "documents_read": self.documents_read,
            "documents_written": self.documents_written,
            "documents_skipped": sum(self.skipped.values()),
            "skipped": dict(sorted(self.skipped.items())),
            "first_skipped": dict(sorted(self.first_skipped.items())),
            "tokens": self.tokens,
            "mean_length": round(self.mean_length, 2),
            "max_length": self.max_length,
            "truncated": self.truncated,
            "max_token_id": self.max_token_id,
        }


class Encoder:
    """Encodes chunks of rows into a Chunk; one per process."""

    def __init__(self, options: PrepareOptions, tokenizer=None, *, light: tuple | None = None):
        """`light`: (tokenizer JSON, eos id, dtype name) to encode pretrain text with `tokenizers` alone."""
        self.options = options
        if light is not None:
            from tokenizers import Tokenizer

            backend = Tokenizer.from_str(light[0])
            self.handler = Handler("pretrain", None, fields=options.fields, backend=backend)
            self.eod, self.dtype = light[1], np.dtype(light[2])
            return
        from bessemer.tokenizer import load_tokenizer

        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(options.tokenizer)
        self.handler = Handler(
            options.handler, self.tokenizer, template=options.template, fields=options.fields
        )
        self.dtype = best_dtype(len(self.tokenizer))
        self.eod = self.tokenizer.eos_token_id
        if options.append_eod and self.eod is None:
            raise DataError(
                f"{options.tokenizer}: the tokenizer has no eos token for --append-eod; drop the flag"
            )

    def light(self) -> tuple | None:
        """What a pretrain worker needs to encode without importing transformers (None for SFT handlers)."""
        if self.handler.is_sft or self.handler.backend is None:
            return None
        return (self.handler.backend.to_str(), self.eod, self.dtype.name)

    def __call__(self, rows: list[tuple[str, dict]]) -> Chunk:
        o = self.options
        results = self.handler.encode(rows, skip_bad=o.skip_bad)
        ids_parts, mask_parts, lengths, skipped, truncated = [], [], [], [], 0
        eod = [self.eod] if o.append_eod else []
        for (loc, _), res in zip(rows, results):
            if isinstance(res, Skip):
                skipped.append((res.reason, loc))
                continue
            ids, mask = res
            if o.max_length and len(ids) + len(eod) > o.max_length:
                keep = o.max_length - len(eod)
                ids = ids[:keep]
                mask = mask[:keep] if mask is not None else None
                truncated += 1
                if mask is not None and not any(mask):
                    skipped.append(("no answer tokens after truncation", loc))
                    continue
            ids = list(ids) + eod
            ids_parts.append(ids)
            lengths.append(len(ids))
            if self.handler.is_sft:
                mask_parts.append(list(mask) + [0] * len(eod))
        flat = np.fromiter(itertools.chain.from_iterable(ids_parts), dtype=np.int64, count=sum(lengths))
        if flat.size and (flat.min() < 0 or flat.max() > np.iinfo(self.dtype).max):
            raise DataError(
                f"{o.tokenizer}: token id {int(flat.max())} does not fit {self.dtype}; report this"
            )
        masks = (
            np.fromiter(itertools.chain.from_iterable(mask_parts), dtype=np.uint8, count=sum(lengths))
            if self.handler.is_sft
            else None
        )
        return Chunk(
            rows=len(rows),
            ids=flat.astype(self.dtype),
            lengths=np.asarray(lengths, dtype=np.int32),
            mask=masks,
            skipped=skipped,
            truncated=truncated,
        )


_WORKER: Encoder | None = None  # set once in each worker process by _init_worker


def _init_worker(options: PrepareOptions, light: tuple | None) -> None:
    global _WORKER
    # one core per worker: the tokenizer's own thread pool would compete with the other workers
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER = Encoder(options, light=light)


def _encode_in_worker(rows):
    return _WORKER(rows)


def _chunks(rows: Iterable, size: int) -> Iterator[list]:
    buf = []
    for r in rows:
        buf.append(r)
        if len(buf) == size:
            yield buf
            buf = []
    if buf:
        yield buf


def encode_chunks(
    options: PrepareOptions, chunks: Iterator[list], workers: int, light: tuple | None = None
) -> Iterator[Chunk]:
    """Encoded chunks in input order, from `workers` spawned processes, with a bounded number in flight."""
    ctx = mp.get_context("spawn")  # fork would copy the parent's tokenizer thread pool, which can deadlock
    with ctx.Pool(workers, initializer=_init_worker, initargs=(options, light)) as pool:
        pending: deque = deque()
        for c in chunks:
            pending.append(pool.apply_async(_encode_in_worker, (c,)))
            if len(pending) >= workers * IN_FLIGHT_PER_WORKER:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


class _Output:
    """Writers for one output dataset (tokens, and the mask for SFT)."""

    def __init__(self, prefix: str, dtype, sft: bool):
        self.prefix = prefix
        self.tokens = IndexedDatasetWriter(prefix, dtype)
        self.mask = IndexedDatasetWriter(mask_prefix(prefix), np.uint8) if sft else None
        self.report = Report()

    def write(self, chunk: Chunk, lo: int, hi: int) -> None:
        a, b = int(chunk.lengths[:lo].sum()), int(chunk.lengths[:hi].sum())
        self.tokens.add_documents(chunk.ids[a:b], chunk.lengths[lo:hi])
        if self.mask is not None:
            self.mask.add_documents(chunk.mask[a:b], chunk.lengths[lo:hi])

    def finalize(self) -> None:
        if self.mask is not None:
            self.mask.finalize()
        self.tokens.finalize()

    def abort(self) -> None:
        self.tokens.abort()
        if self.mask is not None:
            self.mask.abort()


def prepare(
    inputs: list[str],
    out: str,
    options: PrepareOptions,
    *,
    workers: int = 1,
    shard_size: int | None = None,
    txt_mode: str = "line",
    command: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Tokenize `inputs` into the indexed dataset `out` (or shards of it); returns the meta.json dict written."""
    from bessemer.tokenizer import load_tokenizer, tokenizer_fingerprint

    start = time.perf_counter()
    tokenizer = load_tokenizer(options.tokenizer)
    encoder = Encoder(options, tokenizer)  # validates handler, template and eos before any worker starts
    work_start = time.perf_counter()
    dtype = encoder.dtype
    sft = encoder.handler.is_sft
    stats = ReadStats()
    rows = iter_rows(inputs, skip_bad=options.skip_bad, stats=stats, txt_mode=txt_mode)
    chunks = _chunks(rows, CHUNK_ROWS)
    encoded = (
        map(encoder, chunks) if workers <= 1 else encode_chunks(options, chunks, workers, encoder.light())
    )
    total = Report()
    outputs: list[_Output] = []
    current: _Output | None = None
    try:
        for chunk in encoded:
            total.add(chunk)
            lo, n = 0, chunk.lengths.size
            while lo < n:
                if current is None or (shard_size and current.report.documents_written >= shard_size):
                    if current is not None:
                        current.finalize()
                    current = _Output(f"{out}_{len(outputs):05d}" if shard_size else out, dtype, sft)
                    outputs.append(current)
                hi = min(n, lo + shard_size - current.report.documents_written) if shard_size else n
                current.write(chunk, lo, hi)
                current.report.add(_slice(chunk, lo, hi))
                lo = hi
            if progress is not None:
                progress(total.documents_read, total.tokens)
        # rows the reader itself skipped (malformed lines) count as read and skipped
        for reason, count in stats.skipped.items():
            total.documents_read += count
            total.skipped[reason] += count
            total.first_skipped.setdefault(reason, stats.first_bad[reason])
        if total.documents_written == 0:
            raise DataError(_empty_message(inputs, total))
        current.finalize()
    except BaseException:
        for o in outputs:
            if o is not current:
                _remove(o.prefix)
        if current is not None:
            current.abort()
        raise

    meta = {
        **total.as_dict(),
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
        "tokenizer": str(Path(options.tokenizer).resolve()),
        "vocab_size": len(tokenizer),
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "dtype": np.dtype(dtype).name,
        "handler": options.handler,
        "template": encoder.handler.template if sft else None,
        "fields": list(options.fields) if not sft else None,
        "append_eod": options.append_eod,
        "max_length_limit": options.max_length,
        "mask": mask_prefix(Path(out).name) if sft and not shard_size else None,
        "inputs": [str(i) for i in inputs],
        "command": command,
        "workers": workers,
        "seconds": round(time.perf_counter() - start, 3),
        "work_seconds": round(time.perf_counter() - work_start, 3),  # after the tokenizer is loaded
    }
    if shard_size:
        meta["shards"] = [o.prefix for o in outputs]
        for o in outputs:
            shard_meta = {
                **meta,
                **o.report.as_dict(),
                "mask": mask_prefix(Path(o.prefix).name) if sft else None,
            }
            shard_meta.pop("shards")
            _write_json(meta_path(o.prefix), shard_meta)
    _write_json(meta_path(out), meta)
    return meta


def _slice(chunk: Chunk, lo: int, hi: int) -> Chunk:
    a, b = int(chunk.lengths[:lo].sum()), int(chunk.lengths[:hi].sum())
    return Chunk(rows=0, ids=chunk.ids[a:b], lengths=chunk.lengths[lo:hi], mask=None)


def _empty_message(inputs, report: Report) -> str:
    why = ", ".join(f"{n} {r}" for r, n in report.skipped.most_common()) or "no rows"
    first = next(iter(report.first_skipped.values()), None)
    where = f" (first at {first})" if first else ""
    return (
        f"{', '.join(map(str, inputs))}: no documents written ({report.documents_read} read, skipped: {why}{where}); "
        "check --handler and --fields against the data"
    )


def _remove(prefix: str) -> None:
    for p in (prefix, mask_prefix(prefix)):
        indexed.bin_path(p).unlink(missing_ok=True)
        indexed.idx_path(p).unlink(missing_ok=True)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def merge(prefixes: list[str], out: str, *, command: str | None = None) -> dict:
    """Join prepared datasets (same tokenizer) into `out`, in order, with their masks; returns the meta written."""
    if not prefixes:
        raise DataError("--merge needs at least one dataset prefix")
    metas = [read_meta(p) for p in prefixes]
    prints = {m.get("tokenizer_fingerprint") for m in metas} - {None}
    if len(prints) > 1:
        raise DataError(
            f"{', '.join(prefixes)}: prepared with different tokenizers ({', '.join(sorted(prints))}); "
            "merge only datasets of one tokenizer"
        )
    with_mask = [indexed.exists(mask_prefix(p)) for p in prefixes]
    if any(with_mask) and not all(with_mask):
        missing = prefixes[with_mask.index(False)]
        raise DataError(
            f"{missing}: has no loss mask but the others do; merge SFT and pretrain data separately"
        )
    try:
        indexed.merge(prefixes, out)
        if all(with_mask):
            indexed.merge([mask_prefix(p) for p in prefixes], mask_prefix(out))
    except BaseException:
        _remove(out)
        raise
    merged = indexed.IndexedDataset(out)
    lengths = merged.sequence_lengths
    first = metas[0] if metas else {}
    keep = (
        "tokenizer_fingerprint",
        "tokenizer",
        "vocab_size",
        "eos_token_id",
        "bos_token_id",
        "handler",
        "template",
    )
    meta = {
        **{k: first.get(k) for k in keep},
        "documents_read": sum(m.get("documents_read", 0) for m in metas),
        "documents_written": len(merged),
        "documents_skipped": sum(m.get("documents_skipped", 0) for m in metas),
        "tokens": int(merged.num_tokens),
        "mean_length": round(float(lengths.mean()), 2) if len(lengths) else 0.0,
        "max_length": int(lengths.max()) if len(lengths) else 0,
        "truncated": sum(m.get("truncated", 0) for m in metas),
        "max_token_id": max((m.get("max_token_id", -1) for m in metas), default=-1)
        if all("max_token_id" in m for m in metas)
        else None,
        "dtype": merged.dtype.name,
        "mask": mask_prefix(Path(out).name) if all(with_mask) else None,
        "merged_from": [str(p) for p in prefixes],
        "command": command,
    }
    _write_json(meta_path(out), meta)
    return meta
