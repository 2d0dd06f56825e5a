"""Tokenize corpora into indexed datasets, in parallel, with the same bytes for any number of workers.

The inputs are cut into units (readers.plan_units: byte ranges of jsonl/txt files on line boundaries, runs of
parquet row groups, whole files otherwise). Each worker process reads whole units itself, encodes their rows in
batches through the fast tokenizer (handlers.py) and writes the tokens of a unit to a part file beside the
output; the main process appends the parts to the output in input order and merges their lengths into the index.
Nothing crosses between processes per document: a unit's description goes out, its counts and document lengths
come back. So the output is byte for byte the same for any number of workers, memory stays flat in the input's
size (a batch of rows per worker, a word cache of bounded size with `tokenizers`' own BPE cache off behind it,
parts copied in slices), and more workers are never slower: at most one process per core is started, fewer when
there are fewer units or under WORKER_MIN_BYTES of input per worker (starting one costs more than it saves).

Threads: pretrain text of the common pipelines (tokenizers converted from sentencepiece, GPT-2 style byte-level
BPE, SmolLM2's too) goes through bessemer.tokenizer.WordCache (the same ids, several times less CPU, but
Python-bound: one core per process), so more cores need more workers, one per core. Other tokenizers encode through the Rust batch
encoder: with one worker, rows are encoded in this process and its threads (rayon) use every core; N worker
processes get cores // N tokenizer threads each (RAYON_NUM_THREADS), at least RUST_THREADS (so at most cores / 2
workers). When fewer workers than asked are used, prepare says so once (and meta.json records both counts).
The tokenizer is loaded without transformers where it can be (bessemer.tokenizer.load_text_tokenizer): its
import costs seconds, as long as encoding tens of MB.

Special-token text inside documents ("<s>", "</s>", "<|im_end|>") is encoded as ordinary text unless
`allow_special_in_text` is set; control ids come only from templates and the BOS/--append-eod rules.
Empty documents (no text, or text that encodes to no tokens) are skipped and counted as "empty text". Megatron-LM's
preprocess_data.py differs here: it writes an empty text as a document of zero sequences (no tokens, but an entry
in the document index), or, with a tokenizer that adds BOS, as a document of BOS (and eod) alone; the datasets
are then equal except for those documents. Whitespace-only text is a document, encoded like any other text, as
Megatron does (with a BOS tokenizer, whitespace that normalises to nothing gives BOS and eod there and here).

Outputs for PREFIX:
- PREFIX.bin / PREFIX.idx   token ids, Megatron layout (uint16 when the vocabulary fits, else int32);
- PREFIX_mask.bin / .idx    SFT handlers only: one uint8 per token, 1 where the loss is taken (assistant answers);
- PREFIX.meta.json          the report (documents read / written / skipped by reason, tokens, lengths,
                            truncations), the tokenizer's fingerprint, folder and vocabulary size, dtype, handler,
                            template, special-token mode and command line.
With `shard_size`, documents go to PREFIX_00000, PREFIX_00001, ... (each a complete dataset with its own meta.json)
and PREFIX.meta.json lists them; `merge` joins prepared datasets into one.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bessemer.data import indexed
from bessemer.data.handlers import Handler, Skip
from bessemer.data.indexed import IndexedDatasetWriter, best_dtype, mask_prefix, meta_path, read_meta
from bessemer.data.outputs import OutputClaim, check_output, remove_stale_temps, shard_prefix
from bessemer.data.readers import ReadStats, Unit, iter_unit_rows, plan_units
from bessemer.errors import DataError

log = logging.getLogger(__name__)

BATCH_ROWS = 512  # rows per encode_batch call inside a worker
# units: small enough that every worker gets several (load balance), large enough that per-unit costs vanish
MIN_UNIT_BYTES = 1 << 20
MAX_UNIT_BYTES = 64 << 20
UNITS_PER_WORKER = 4
RUST_THREADS = 2  # tokenizer threads per worker at least, when encoding through the Rust batch encoder
# starting a worker process (imports, tokenizer) and feeding it costs about what encoding 10-20 MB costs with the
# WordCache, and a single process already runs the Rust batch encoder on every core: each worker must have at
# least this much input to be worth starting (on 2 loaded cores, 20 MB per worker was slower than one process)
WORKER_MIN_BYTES = 32 << 20
COPY_TOKENS = 1 << 19  # tokens the main process reads from a part file at a time


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
    allow_special_in_text: bool = False  # encode "<s>" in a document as the control id (opt-in)


@dataclass
class Chunk:
    """Encoded documents of one batch of rows, flattened."""

    rows: int
    ids: np.ndarray
    lengths: np.ndarray
    mask: np.ndarray | None
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (reason, location)
    truncated: int = 0


@dataclass
class Report:
    """Counts of one `prepare` run (or of one unit, or one shard); written into PREFIX.meta.json."""

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

    def add_documents(self, ids: np.ndarray, lengths: np.ndarray) -> None:
        self.documents_written += int(lengths.size)
        self.tokens += int(ids.size)
        if lengths.size:
            self.max_length = max(self.max_length, int(lengths.max()))
        if ids.size:
            self.max_token_id = max(self.max_token_id, int(ids.max()))

    def add_chunk(self, chunk: Chunk) -> None:
        self.documents_read += chunk.rows
        self.add_documents(chunk.ids, chunk.lengths)
        self.truncated += chunk.truncated
        for reason, loc in chunk.skipped:
            self.add_skipped(reason, loc)

    def add_skipped(self, reason: str, loc: str, count: int = 1) -> None:
        self.skipped[reason] += count
        self.first_skipped.setdefault(reason, loc)

    def merge(self, other: Report) -> None:
        """Add the counts of the next unit (reports are merged in input order, so `first_skipped` is first)."""
        self.documents_read += other.documents_read
        self.documents_written += other.documents_written
        self.tokens += other.tokens
        self.max_length = max(self.max_length, other.max_length)
        self.max_token_id = max(self.max_token_id, other.max_token_id)
        self.truncated += other.truncated
        for reason, count in other.skipped.items():
            self.add_skipped(reason, other.first_skipped[reason], count)

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


def text_backend(backend, allow_special_in_text: bool):
    """A `tokenizers.Tokenizer` that encodes special-token text as text (unless allowed as control): `backend`
    itself when it already does, else a copy (the caller's tokenizer keeps its mode)."""
    from tokenizers import Tokenizer

    if backend.encode_special_tokens != allow_special_in_text:
        return backend
    copy = Tokenizer.from_str(backend.to_str())
    copy.encode_special_tokens = not allow_special_in_text
    return copy


def _words(backend, options: PrepareOptions):
    """A WordCache for pretrain text (same ids, faster) where the tokenizer's pipeline allows, else None."""
    from bessemer.tokenizer import WordCache

    if backend is None or options.allow_special_in_text or options.handler != "pretrain":
        return None
    return WordCache.for_backend(backend)


def _text_encoder(words):
    return None if words is None else functools.partial(words.encode, add_special_tokens=True)


class Encoder:
    """Encodes batches of rows into Chunks; one per process."""

    def __init__(self, options: PrepareOptions, tokenizer=None, *, light: tuple | None = None):
        """`light`: what `light()` returns, to encode pretrain text without importing transformers."""
        self.options = options
        if light is not None:
            text, self.words, self.eod, dtype = light
            self.dtype = np.dtype(dtype)
            backend = None
            if self.words is None:
                from tokenizers import Tokenizer

                backend = Tokenizer.from_str(text)
                backend.encode_special_tokens = not options.allow_special_in_text
            self.handler = Handler(
                "pretrain",
                None,
                fields=options.fields,
                backend=backend,
                text_encoder=_text_encoder(self.words),
            )
            return
        from bessemer.tokenizer import load_tokenizer

        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(options.tokenizer)
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if options.handler == "pretrain" and backend is not None:
            backend = text_backend(backend, options.allow_special_in_text)
        self.words = _words(backend, options)
        self.handler = Handler(
            options.handler,
            self.tokenizer,
            template=options.template,
            fields=options.fields,
            backend=backend,
            text_encoder=_text_encoder(self.words),
        )
        self.dtype = best_dtype(len(self.tokenizer))
        self.eod = self.tokenizer.eos_token_id
        if options.append_eod and self.eod is None:
            raise DataError(
                f"{options.tokenizer}: the tokenizer has no eos token for --append-eod; drop the flag"
            )

    def light(self) -> tuple | None:
        """What a pretrain worker needs to encode without importing transformers (None for SFT handlers):
        the WordCache, or else the tokenizer as JSON."""
        if self.handler.is_sft or self.handler.backend is None:
            return None
        if self.words is not None:
            return (None, self.words, self.eod, self.dtype.name)
        return (self.handler.backend.to_str(), None, self.eod, self.dtype.name)

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
            if (
                not ids
            ):  # text the tokenizer turns into nothing: Megatron writes no tokens (and no eod) either
                skipped.append(("empty text", loc))
                continue
            if o.max_length and len(ids) + len(eod) > o.max_length:
                keep = o.max_length - len(eod)
                ids = ids[:keep]
                mask = mask[:keep] if mask is not None else None
                if mask is not None and not any(mask):
                    skipped.append(("no answer tokens after truncation", loc))
                    continue
                truncated += 1  # documents written cut short
            ids_parts.append(ids)
            if eod:
                ids_parts.append(eod)
            lengths.append(len(ids) + len(eod))
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


@dataclass
class Part:
    """One encoded unit: its counts, its document lengths, and the part files holding its tokens (and mask)."""

    report: Report
    lengths: np.ndarray
    bin: str
    mask: str | None


def part_paths(out: str, k: int) -> tuple[str, str]:
    """The hidden part files of unit k beside the output (tokens, mask); removed once appended."""
    p = Path(out)
    stem = p.parent / f".{p.name}.part{k:06d}.tmp-{os.getpid()}"
    return f"{stem}.bin", f"{stem}.mask.bin"


def encode_unit(encoder: Encoder, unit: Unit, paths: tuple[str, str], progress=None) -> Part:
    """Read, encode and write one unit to its part files."""
    stats = ReadStats()
    report = Report()
    lengths: list[np.ndarray] = []
    sft = encoder.handler.is_sft
    with open(paths[0], "wb") as fb, open(paths[1], "wb") if sft else contextlib.nullcontext() as fm:
        rows_in = iter_unit_rows(unit, encoder.options.skip_bad, stats, encoder.handler.columns)
        for rows in _batches(rows_in, BATCH_ROWS):
            chunk = encoder(rows)
            report.add_chunk(chunk)
            fb.write(memoryview(chunk.ids).cast("B"))
            if sft:
                fm.write(memoryview(chunk.mask).cast("B"))
            lengths.append(chunk.lengths)
            if progress is not None:
                progress(chunk)
    # rows the reader itself skipped (malformed lines) count as read and skipped
    for reason, count in stats.skipped.items():
        report.documents_read += count
        report.add_skipped(reason, stats.first_bad[reason], count)
    all_lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int32)
    return Part(report, all_lengths, paths[0], paths[1] if sft else None)


_WORKER: Encoder | None = None  # set once in each worker process by _init_worker


def _init_worker(options: PrepareOptions, light: tuple | None, threads: int, parent: int) -> None:
    global _WORKER
    # Ctrl-C reaches the whole process group: the parent alone handles it (and ends the workers)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # the cores not taken by other workers go to this worker's tokenizer threads
    os.environ["RAYON_NUM_THREADS"] = str(threads)
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if threads > 1 else "false"
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    _WORKER = Encoder(options, light=light)


def _exit_with_parent(parent: int) -> None:
    # a parent killed outright (SIGKILL) cannot end its workers: they end themselves
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _encode_in_worker(task: tuple[Unit, tuple[str, str]]) -> Part:
    return encode_unit(_WORKER, *task)


def _batches(rows: Iterable, size: int) -> Iterator[list]:
    batch: list = []
    try:
        for row in rows:
            batch.append(row)
            if len(batch) == size:
                yield batch
                batch = []
    except DataError:
        # a bad line stops the reader: the rows before it are encoded first, so an earlier bad row is the
        # one reported, as in input order
        if batch:
            yield batch
        raise
    if batch:
        yield batch


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def encode_parts(
    encoder: Encoder, units: list[Unit], out: str, workers: int, progress=None
) -> Iterator[Part]:
    """Encoded parts in input order: in this process for one worker, else from `workers` spawned processes."""
    tasks = [(u, part_paths(out, k)) for k, u in enumerate(units)]
    if workers <= 1:
        for unit, paths in tasks:
            yield encode_unit(encoder, unit, paths, progress)
        return
    threads = max(1, available_cores() // workers)
    # spawn, not fork: fork would copy the parent's tokenizer thread pool, which can deadlock
    pool = mp.get_context("spawn").Pool(
        workers,
        initializer=_init_worker,
        initargs=(encoder.options, encoder.light(), threads, os.getpid()),
    )
    done = False
    try:
        yield from pool.imap(_encode_in_worker, tasks, chunksize=1)
        done = True
    finally:
        if done:
            pool.close()
        else:
            pool.terminate()
        pool.join()


class _Output:
    """Writers for one output dataset (tokens, and the mask for SFT)."""

    def __init__(self, prefix: str, dtype, sft: bool):
        self.prefix = prefix
        self.tokens = IndexedDatasetWriter(prefix, dtype)
        self.mask = IndexedDatasetWriter(mask_prefix(prefix), np.uint8) if sft else None
        self.report = Report()

    def writers(self) -> list[IndexedDatasetWriter]:
        return [self.tokens] + ([self.mask] if self.mask is not None else [])


class _Router:
    """Appends parts, in order, to the output dataset (or to its shards of `shard_size` documents).

    Every output waits under temporary names until `commit` puts them all in place at the end of the run."""

    def __init__(self, claim: OutputClaim, dtype, sft: bool, shard_size: int | None):
        self.claim, self.dtype, self.sft, self.shard_size = claim, np.dtype(dtype), sft, shard_size
        self.out = claim.prefix
        self.outputs: list[_Output] = []
        self.current: _Output | None = None

    def add(self, part: Part) -> None:
        n = part.lengths.size
        if n == 0:
            return
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(part.lengths, out=offsets[1:])
        # read in slices of whole documents, COPY_TOKENS at most (one document at least), not mapped whole:
        # the pages of a mapped part count in resident memory, which then grew with the unit's size
        with (
            open(part.bin, "rb") as fb,
            open(part.mask, "rb") if part.mask else contextlib.nullcontext() as fm,
        ):
            lo = 0
            while lo < n:
                out = self._output()
                hi = min(n, lo + self.shard_size - out.report.documents_written) if self.shard_size else n
                fits = int(np.searchsorted(offsets, offsets[lo] + COPY_TOKENS, side="right")) - 1
                hi = min(hi, max(lo + 1, fits))
                count = int(offsets[hi] - offsets[lo])
                ids = np.frombuffer(fb.read(count * self.dtype.itemsize), dtype=self.dtype)
                lengths = part.lengths[lo:hi]
                out.tokens.add_documents(ids, lengths)
                if out.mask is not None:
                    out.mask.add_documents(np.frombuffer(fm.read(count), dtype=np.uint8), lengths)
                out.report.add_documents(ids, lengths)
                out.report.documents_read += hi - lo  # a shard's rows are its documents (skips count overall)
                lo = hi

    def _output(self) -> _Output:
        cur = self.current
        if cur is None or (self.shard_size and cur.report.documents_written >= self.shard_size):
            if cur is not None:
                for w in cur.writers():
                    w.close()  # its file handle goes; the files wait for commit
            name = shard_prefix(self.out, len(self.outputs)) if self.shard_size else self.out
            if name != self.out:
                self.claim.check(name)
            self.current = _Output(name, self.dtype, self.sft)
            self.outputs.append(self.current)
        return self.current

    def commit(self) -> None:
        for o in self.outputs:
            for w in o.writers():
                w.close()
        self.claim.retire()
        for o in self.outputs:
            for w in o.writers():
                w.commit()

    def abort(self) -> None:
        for o in self.outputs:
            for w in o.writers():
                w.abort()


def plan_workers(requested: int, units: int, total_bytes: int, min_threads: int = 1) -> int:
    """Worker processes to use: never more than the cores (each with at least `min_threads` of them), the units,
    or what the input size pays for."""
    cores = max(1, available_cores() // min_threads)
    return max(1, min(requested, cores, units, total_bytes // max(1, WORKER_MIN_BYTES)))


def prepare(
    inputs: list[str],
    out: str,
    options: PrepareOptions,
    *,
    workers: int = 1,
    shard_size: int | None = None,
    txt_mode: str = "line",
    delimiter: str | None = None,
    command: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    overwrite: bool = False,
) -> dict:
    """Tokenize `inputs` into the indexed dataset `out` (or shards of it); returns the meta.json dict written."""
    from bessemer.tokenizer import load_text_tokenizer, load_tokenizer, tokenizer_fingerprint

    start = time.perf_counter()
    out = str(out)
    check_output(out)
    claim = OutputClaim(out, overwrite)
    remove_stale_temps(out)
    # pretrain text needs only the Rust tokenizer: loaded without transformers (seconds of imports) where it can be
    tokenizer = load_text_tokenizer(options.tokenizer) if options.handler == "pretrain" else None
    tokenizer = tokenizer or load_tokenizer(options.tokenizer)
    encoder = Encoder(options, tokenizer)  # validates handler, template and eos before any worker starts
    work_start = time.perf_counter()
    dtype = encoder.dtype
    sft = encoder.handler.is_sft
    total_bytes = sum(Path(f).stat().st_size for f in _input_files(inputs))
    target = int(np.clip(total_bytes // max(1, workers * UNITS_PER_WORKER), MIN_UNIT_BYTES, MAX_UNIT_BYTES))
    units = plan_units(inputs, target_bytes=target, txt_mode=txt_mode, delimiter=delimiter)
    # the Rust batch encoder (no WordCache) gets two threads per process: on 2 loaded cores, two one-thread
    # workers took 25% more CPU and longer than one process running two threads
    used = plan_workers(workers, len(units), total_bytes, min_threads=1 if encoder.words else RUST_THREADS)
    if used < workers:
        log.info(
            "prepare: using %d of %d workers (%.1f MB in %d units, %d cores, %d MB or more per worker)",
            used, workers, total_bytes / 1e6, len(units), available_cores(), WORKER_MIN_BYTES >> 20,
        )  # fmt: skip
    total = Report()
    router = _Router(claim, dtype, sft, shard_size)
    live = Report()  # progress inside a unit when encoding in this process

    def inline_progress(chunk: Chunk) -> None:
        live.add_chunk(chunk)
        if progress is not None:
            progress(total.documents_read + live.documents_read, total.tokens + live.tokens)

    parts = encode_parts(encoder, units, out, used, inline_progress)
    try:
        with contextlib.closing(parts):
            for part in parts:
                live = Report()
                try:
                    router.add(part)
                finally:
                    _unlink(part.bin, part.mask)
                total.merge(part.report)
                if progress is not None:
                    progress(total.documents_read, total.tokens)
        if total.documents_written == 0:
            raise DataError(_empty_message(inputs, total))
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
            # how special-token text inside documents was encoded: as text, or as control ids (opt-in)
            "special_tokens_in_text": "control" if options.allow_special_in_text else "text",
            "max_length_limit": options.max_length,
            "mask": mask_prefix(Path(out).name) if sft and not shard_size else None,
            "inputs": [str(i) for i in inputs],
            "command": command,
            "workers": used,  # processes that encoded (see plan_workers)
            "workers_requested": workers,
            "seconds": round(time.perf_counter() - start, 3),
            "work_seconds": round(time.perf_counter() - work_start, 3),  # after the tokenizer is loaded
        }
        router.commit()
        if shard_size:
            meta["shards"] = [o.prefix for o in router.outputs]
            for o in router.outputs:
                shard_meta = {
                    **meta,
                    **o.report.as_dict(),
                    "mask": mask_prefix(Path(o.prefix).name) if sft else None,
                }
                shard_meta.pop("shards")
                _write_json(meta_path(o.prefix), shard_meta)
        _write_json(meta_path(out), meta)
        claim.clean([o.prefix for o in router.outputs], sft)
    except OSError as exc:
        router.abort()
        raise DataError(f"{out}: cannot write the dataset ({exc.strerror or exc}); check the path, "
                        "its permissions and free space") from exc  # fmt: skip
    except BaseException:
        router.abort()
        raise
    finally:
        for k in range(len(units)):
            _unlink(*part_paths(out, k))
    return meta


def _input_files(inputs) -> list[Path]:
    from bessemer.data.readers import expand_inputs

    return expand_inputs(inputs)


def _unlink(*paths: str | None) -> None:
    for p in paths:
        if p:
            Path(p).unlink(missing_ok=True)


def _empty_message(inputs, report: Report) -> str:
    why = ", ".join(f"{n} {r}" for r, n in report.skipped.most_common()) or "no rows"
    first = next(iter(report.first_skipped.values()), None)
    where = f" (first at {first})" if first else ""
    return (
        f"{', '.join(map(str, inputs))}: no documents written ({report.documents_read} read, skipped: {why}{where}); "
        "check --handler and --fields against the data"
    )


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _shards_of(prefix: str) -> list[str]:
    """The shards of a sharded `prepare` output (its meta.json lists them), else the prefix itself."""
    shards = read_meta(prefix).get("shards") if not indexed.exists(prefix) else None
    return [shard_prefix(prefix, k) for k in range(len(shards))] if isinstance(shards, list) else [prefix]


def merge(prefixes: list[str], out: str, *, command: str | None = None, overwrite: bool = False) -> dict:
    """Join prepared datasets (same tokenizer; a sharded one counts as its shards) into `out`, in order, with
    their masks; returns the meta written."""
    if not prefixes:
        raise DataError("--merge needs at least one dataset prefix")
    prefixes = [s for p in prefixes for s in _shards_of(str(p))]
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
    check_output(out)
    claim = OutputClaim(out, overwrite)
    for p in prefixes:  # a missing or damaged input fails here, in one line, before anything is written
        indexed.IndexedDataset(p)
    dtype = indexed.IndexedDataset(prefixes[0]).dtype
    writers = [IndexedDatasetWriter(out, dtype)]
    if all(with_mask):
        writers.append(IndexedDatasetWriter(mask_prefix(out), np.uint8))
    try:
        for w, sources in zip(writers, (prefixes, [mask_prefix(p) for p in prefixes])):
            for p in sources:
                w.add_dataset(p)
            w.close()
        claim.retire()
        for w in writers:
            w.commit()
    except OSError as exc:
        for w in writers:
            w.abort()
        raise DataError(f"{out}: cannot write the merged dataset ({exc.strerror or exc}); check the path "
                        "and free space") from exc  # fmt: skip
    except BaseException:
        for w in writers:
            w.abort()
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
    claim.clean([out], all(with_mask), inputs=prefixes)
    return meta
