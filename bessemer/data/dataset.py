"""What the trainer reads: packed, blended, split micro-batches in one global order, resumable exactly.

Order. Each dataset's documents are split by ratio into contiguous train/valid/test ranges. In epoch e of a
dataset, its split's documents are shuffled and laid end to end; sample i of that stream is the seq_len+1 tokens
starting at i*seq_len (samples cross document boundaries, as Megatron's do; the tail shorter than a sample is
dropped), and the samples of the epoch are shuffled too. Several datasets are interleaved by weight with a fixed
pattern of 65,536 slots in which each dataset holds its share, spread evenly. Every random draw is seeded by
(seed, dataset position, split, epoch), so the order is a pure function of the seed, the datasets' sizes, the
weights, seq_len and the split: every rank and every resume computes it alone, with no shared cache.

Layout. Optimizer step s consumes global samples [s*G, (s+1)*G), G = global_batch_size; data-parallel rank r of
dp_size takes the contiguous slice of G/dp_size of them, as micro-batches of micro_batch_size in order. The same
step therefore sees the same samples under any layout, and the state (samples consumed) is global.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from bessemer.data import indexed
from bessemer.data.indexed import IndexedDataset, mask_prefix, meta_path, read_meta
from bessemer.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
BLEND_SLOTS = 1 << 16
IGNORE_INDEX = -100
STATE_VERSION = 1


def parse_split(split: str) -> list[float]:
    """'98,1,1' -> [0.98, 0.01, 0.01]; fewer than three numbers leave the rest empty."""
    try:
        parts = [float(x) for x in str(split).replace("/", ",").split(",") if x.strip()]
    except ValueError as exc:
        raise ConfigError(
            f"data.split={split!r} is not numbers; write it like '98,1,1' (train,valid,test)"
        ) from exc
    if not 1 <= len(parts) <= 3 or any(p < 0 for p in parts) or sum(parts) <= 0:
        raise ConfigError(f"data.split={split!r} needs 1 to 3 non-negative ratios; write it like '98,1,1'")
    parts += [0.0] * (3 - len(parts))
    total = sum(parts)
    return [p / total for p in parts]


def split_range(n_docs: int, split: str, which: str) -> tuple[int, int]:
    """The [start, stop) document range of split `which` among `n_docs` documents."""
    if which not in SPLITS:
        raise ConfigError(f"split {which!r} is unknown; use one of: {', '.join(SPLITS)}")
    ratios = parse_split(split)
    bounds = [0]
    acc = 0.0
    for r in ratios:
        acc += r
        bounds.append(round(acc * n_docs))
    bounds[-1] = n_docs
    k = SPLITS.index(which)
    return bounds[k], bounds[k + 1]


def blend_pattern(
    weights: list[float], slots: int = BLEND_SLOTS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One period of the blend: dataset of each slot, its rank among that dataset's slots, and slots per dataset."""
    w = np.asarray(weights, dtype=np.float64)
    if len(w) == 1:
        return np.zeros(1, np.int64), np.zeros(1, np.int64), np.ones(1, np.int64)
    w = w / w.sum()
    counts = np.floor(w * slots).astype(np.int64)
    rest = slots - int(counts.sum())
    order = np.argsort(-(w * slots - counts), kind="stable")
    counts[order[:rest]] += 1
    if np.any((counts == 0) & (w > 0)):
        raise ConfigError(f"data.weights: a weight below 1/{slots} of the total cannot be blended; raise it")
    # each dataset's slots sit at evenly spaced ideal positions; merging them interleaves the datasets smoothly
    ideal = np.concatenate([(np.arange(c) + 0.5) / c for c in counts if c])
    owner = np.concatenate([np.full(c, d) for d, c in enumerate(counts) if c])
    rank = np.concatenate([np.arange(c) for c in counts if c])
    order = np.lexsort((owner, ideal))
    return owner[order], rank[order], counts


@dataclass
class _Epoch:
    doc_order: np.ndarray  # dataset document ids in stream order
    ends: np.ndarray  # cumulative token count at the end of each document of the stream
    sample_order: np.ndarray  # stream sample index of each epoch sample


class _Source:
    """One dataset's split: maps a local sample index to its tokens, loss mask and document starts."""

    def __init__(self, prefix: str, position: int, split: str, which: str, seq_len: int, seed: int):
        self.prefix = prefix
        self.position = position
        self.seq_len = seq_len
        self.seed = seed
        self.split_id = SPLITS.index(which)
        shards = read_meta(prefix).get("shards") if not indexed.exists(prefix) else None
        if shards:
            raise DataError(
                f"{prefix}: was prepared as {len(shards)} shards; list them in data.paths, or join them with "
                f"`bessemer prepare --merge {' '.join(shards)} --out {prefix}`"
            )
        self.ds = IndexedDataset(prefix)
        mprefix = mask_prefix(prefix)
        self.mask = IndexedDataset(mprefix) if indexed.exists(mprefix) else None
        if self.mask is not None and not np.array_equal(self.mask.sequence_lengths, self.ds.sequence_lengths):
            raise DataError(
                f"{mprefix}.idx: document lengths differ from {prefix}.idx; rebuild with `bessemer prepare`"
            )
        self.start, self.stop = split_range(len(self.ds), split, which)
        self.lengths = np.asarray(self.ds.sequence_lengths[self.start : self.stop], dtype=np.int64)
        self.num_tokens = int(self.lengths.sum())
        self.samples_per_epoch = max(0, (self.num_tokens - 1) // seq_len)
        self._epochs: dict[int, _Epoch] = {}

    def _epoch(self, e: int) -> _Epoch:
        if e not in self._epochs:
            if len(self._epochs) >= 2:
                self._epochs.pop(min(self._epochs))
            rng = np.random.default_rng([self.seed, self.position, self.split_id, e])
            perm = rng.permutation(self.stop - self.start)
            ends = np.cumsum(self.lengths[perm])
            self._epochs[e] = _Epoch(perm + self.start, ends, rng.permutation(self.samples_per_epoch))
        return self._epochs[e]

    def sample(self, j: int) -> tuple[np.ndarray, np.ndarray | None, list[int]]:
        """Tokens (seq_len+1), mask or None, and the offsets within the sample where a document starts."""
        e, i = divmod(int(j), self.samples_per_epoch)
        ep = self._epoch(e)
        pos = int(ep.sample_order[i]) * self.seq_len
        need = self.seq_len + 1
        k = int(np.searchsorted(ep.ends, pos, side="right"))
        offset = pos - (int(ep.ends[k]) - int(self.lengths[ep.doc_order[k] - self.start]))
        toks, masks, starts, got = [], [], [], 0
        while got < need:
            doc = int(ep.doc_order[k])
            if offset == 0:
                starts.append(got)
            part = self.ds.get(doc, offset, need - got)
            toks.append(part)
            if self.mask is not None:
                masks.append(self.mask.get(doc, offset, need - got))
            got += part.size
            k += 1
            offset = 0
        tokens = np.concatenate(toks).astype(np.int64)
        mask = np.concatenate(masks) if self.mask is not None else None
        return tokens, mask, starts


class PackedBatches:
    """Micro-batches of packed samples for one data-parallel rank; Stateful, so checkpoints resume exactly.

    Each batch: "tokens" and "labels" [B, T] int64 (labels are the next tokens, -100 where the loss mask is 0),
    "positions" [B, T] int64, and with data.reset_positions "doc_ids" [B, T] int64 (increasing at each document
    start within a row, for block-diagonal attention). The iterator never ends; it cycles through epochs.
    """

    def __init__(
        self,
        data,
        *,
        seq_len: int,
        micro_batch_size: int,
        global_batch_size: int,
        seed: int,
        dp_rank: int = 0,
        dp_size: int = 1,
        split: str = "train",
        vocab_size: int | None = None,
        tokenizer_fingerprint: str | None = None,
    ):
        if not data.paths:
            raise ConfigError("data.paths is empty; list the prefixes written by `bessemer prepare`")
        if data.weights and len(data.weights) != len(data.paths):
            raise ConfigError(
                f"data.weights has {len(data.weights)} entries for {len(data.paths)} data.paths; give one per path"
            )
        if data.weights and (any(w < 0 for w in data.weights) or sum(data.weights) <= 0):
            raise ConfigError("data.weights must be non-negative with a positive sum")
        if seq_len < 1 or micro_batch_size < 1 or dp_size < 1 or not 0 <= dp_rank < dp_size:
            raise ConfigError(
                f"bad layout: seq_len={seq_len} micro_batch_size={micro_batch_size} dp {dp_rank}/{dp_size}"
            )
        if global_batch_size % (micro_batch_size * dp_size):
            raise ConfigError(
                f"global_batch_size={global_batch_size} is not a multiple of micro_batch_size x dp size "
                f"({micro_batch_size} x {dp_size}); change train.global_batch_size"
            )
        self.seq_len = seq_len
        self.micro_batch_size = micro_batch_size
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.dp_rank = dp_rank
        self.dp_size = dp_size
        self.split = split
        self.vocab_size = vocab_size
        self.reset_positions = bool(data.reset_positions)
        self.micro_batches_per_step = global_batch_size // (micro_batch_size * dp_size)
        # open first: a missing dataset is one error, not a warning about its missing meta.json and then the error
        sources = [_Source(str(p), i, data.split, split, seq_len, seed) for i, p in enumerate(data.paths)]
        self._metas = [read_meta(p) for p in data.paths]
        for p, meta in zip(data.paths, self._metas):
            _check_meta(p, meta, vocab_size, tokenizer_fingerprint)
        weights = list(data.weights) if data.weights else [s.num_tokens for s in sources]
        for s, w in zip(sources, weights):
            if w > 0 and s.samples_per_epoch == 0:
                if split != "train" and any(o.samples_per_epoch for o in sources):
                    log.warning(
                        "%s: %s split too small for one sample; left out of the blend", s.prefix, split
                    )
                    continue
                raise DataError(
                    f"{s.prefix}: the {split} split holds {s.num_tokens} tokens, fewer than one sample of "
                    f"seq_len+1={seq_len + 1}; add data, lower seq_len or change data.split"
                )
        keep = [i for i, (s, w) in enumerate(zip(sources, weights)) if w > 0 and s.samples_per_epoch > 0]
        if not keep:
            raise ConfigError(
                "data.weights leave no dataset with samples; give at least one a positive weight"
            )
        self._sources = [sources[i] for i in keep]
        self._owner, self._rank, self._counts = blend_pattern([weights[i] for i in keep])
        self.consumed_samples = 0
        self.micro_batch = 0

    @property
    def meta(self) -> dict:
        """The first dataset's meta.json."""
        return self._metas[0]

    def __iter__(self):
        return self

    def sample(self, g: int) -> tuple[np.ndarray, np.ndarray | None, list[int], _Source]:
        """Global sample g: tokens (seq_len+1), loss mask or None, document starts, and its dataset."""
        period, slot = divmod(int(g), len(self._owner))
        src = self._sources[int(self._owner[slot])]
        j = period * int(self._counts[self._owner[slot]]) + int(self._rank[slot])
        return (*src.sample(j), src)

    def global_indices(self) -> range:
        """The global sample indices of the next micro-batch of this rank."""
        per_rank = self.global_batch_size // self.dp_size
        start = self.consumed_samples + self.dp_rank * per_rank + self.micro_batch * self.micro_batch_size
        return range(start, start + self.micro_batch_size)

    def __next__(self) -> dict[str, torch.Tensor]:
        batch = self.collate(self.global_indices())
        self.micro_batch += 1
        if self.micro_batch == self.micro_batches_per_step:
            self.micro_batch = 0
            self.consumed_samples += self.global_batch_size
        return batch

    def collate(self, indices) -> dict[str, torch.Tensor]:
        """The batch dict of the given global sample indices."""
        n, T = len(indices), self.seq_len
        tokens = np.empty((n, T + 1), np.int64)
        keep = np.ones((n, T), bool)
        starts = np.zeros((n, T), bool)
        for b, g in enumerate(indices):
            toks, mask, doc_starts, src = self.sample(g)
            if self.vocab_size is not None and int(toks.max()) >= self.vocab_size:
                raise DataError(
                    f"{src.prefix}.bin: token id {int(toks.max())} >= vocab_size {self.vocab_size}; "
                    "prepare the data with the model's tokenizer"
                )
            tokens[b] = toks
            if mask is not None:
                keep[b] = mask[1:] != 0
            for s in doc_starts:
                if 0 < s < T:
                    starts[b, s] = True
        labels = tokens[:, 1:].copy()
        labels[~keep] = IGNORE_INDEX
        out = {"tokens": torch.from_numpy(tokens[:, :-1].copy()), "labels": torch.from_numpy(labels)}
        ar = np.broadcast_to(np.arange(T), (n, T))
        if self.reset_positions:
            last_start = np.maximum.accumulate(np.where(starts, ar, 0), axis=1)
            out["positions"] = torch.from_numpy(ar - last_start)
            out["doc_ids"] = torch.from_numpy(np.cumsum(starts, axis=1, dtype=np.int64))
        else:
            out["positions"] = torch.from_numpy(ar.copy())
        return out

    def state_dict(self) -> dict:
        return {
            "version": STATE_VERSION,
            "consumed_samples": self.consumed_samples,
            "micro_batch": self.micro_batch,
            "micro_batch_size": self.micro_batch_size,
            "dp_size": self.dp_size,
            "global_batch_size": self.global_batch_size,
            "seed": self.seed,
            "seq_len": self.seq_len,
            "split": self.split,
        }

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "seq_len", "split"):
            if state.get(key) != getattr(self, key):
                raise DataError(
                    f"data-loader state has {key}={state.get(key)!r} but this run has {getattr(self, key)!r}; "
                    "the sample order would differ, so resume with the same value (or start without the state)"
                )
        micro = int(state.get("micro_batch", 0))
        if micro and (
            state.get("dp_size") != self.dp_size
            or state.get("micro_batch_size") != self.micro_batch_size
            or state.get("global_batch_size") != self.global_batch_size
        ):
            raise DataError(
                "data-loader state was saved in the middle of a step under another batch layout; "
                "resume from a checkpoint taken at a step boundary"
            )
        self.consumed_samples = int(state["consumed_samples"])
        self.micro_batch = micro


def _check_meta(prefix, meta: dict, vocab_size: int | None, fingerprint: str | None) -> None:
    if not meta:
        log.warning("%s: no meta.json; tokenizer and vocabulary size cannot be checked", meta_path(prefix))
        return
    have = meta.get("tokenizer_fingerprint")
    if fingerprint is not None and have is not None and have != fingerprint:
        raise DataError(
            f"{prefix}: prepared with tokenizer {have} ({meta.get('tokenizer', '?')}) but the model's tokenizer is "
            f"{fingerprint}; re-run `bessemer prepare` with the model's tokenizer"
        )
    top = meta.get("max_token_id")
    if vocab_size is not None and top is not None and int(top) >= vocab_size:
        raise DataError(
            f"{prefix}: holds token id {top} >= the model's vocab_size {vocab_size}; "
            "prepare the data with the model's tokenizer or enlarge the vocabulary"
        )
