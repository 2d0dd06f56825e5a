"""Choosing the next token for a whole batch at once: greedy, temperature, top-k, top-p, repetition penalty.

Every row has its own parameters and its own seed. Rows are grouped by the work they need (known on the host,
so no device round trip): greedy rows take the argmax; rows with a top-k take `topk(k)` of their logits and
never touch the rest of the vocabulary; top-p rows without a top-k rank their logits (`rank_for_top_p`);
temperature-only rows sample in vocabulary order without sorting. A sampled row draws by inverse CDF: one uniform number per
row, a counter-based hash of (seed, position), is looked up in the cumulative weights of its candidates. So a
row draws the same token whatever else is in the batch and whenever it joined, with no generator per row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from bessemer.errors import ConfigError

M32 = 0xFFFFFFFF
TINY = torch.finfo(torch.float32).tiny


@dataclass
class SamplingParams:
    """How one sequence is decoded. temperature 0 is greedy; top_k 0 and top_p 1 switch those filters off."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)  # generation ends before any of these strings
    stop_token_ids: list[int] = field(default_factory=list)  # ... and after any of these ids (not shown)
    logprobs: int | None = None  # record each chosen token's log-probability and this many top ones

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ConfigError(f"generate.max_new_tokens={self.max_new_tokens}: use 0 or more")
        if not self.temperature >= 0:
            raise ConfigError(f"generate.temperature={self.temperature}: use 0 (greedy) or more")
        if self.top_k < 0:
            raise ConfigError(f"generate.top_k={self.top_k}: use 0 (off) or more")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"generate.top_p={self.top_p}: use a value in (0, 1]")
        if not self.repetition_penalty > 0:
            raise ConfigError(
                f"generate.repetition_penalty={self.repetition_penalty}: use a value > 0 (1 = off)"
            )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """Make tokens already in the sequence less likely (CTRL's rule, as transformers applies it).

    logits [B, V] float; seen [B, V] bool; penalty [B] (1 = off). A seen token's positive logit is divided by
    the penalty and a negative one multiplied, so a penalty > 1 always lowers it.
    """
    p = penalty[:, None].to(logits.dtype)
    penalised = torch.where(logits > 0, logits / p, logits * p)
    return torch.where(seen, penalised, logits)


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash on int64 tensors (values in [0, 2^32)); products stay below 2^63."""
    x = ((x ^ (x >> 16)) * 0x7FEB352D) & M32
    x = ((x ^ (x >> 15)) * 0x6C8E9CF5) & M32
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & M32
    return x ^ (x >> 16)


def seed_key(seed: int) -> int:
    """A 32-bit key from any 64-bit seed."""
    lo, hi = torch.tensor([seed & M32]), torch.tensor([(seed >> 32) & M32])
    return int(_mix32(lo ^ _mix32(hi + 0x9E3779B9)))


def uniform(keys: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """One number in [0, 1) per row [B], a pure function of the row's key [B] and position [B] (24 bits)."""
    bits = _mix32(keys ^ _mix32(positions & M32))
    return (bits >> 8).to(torch.float32) / float(1 << 24)


def draw_sorted(
    values: torch.Tensor, top_p: torch.Tensor, u: torch.Tensor, total: torch.Tensor | None = None
) -> torch.Tensor:
    """Column drawn per row [b] from logits sorted in descending order [b, W]: the smallest leading set whose
    probability reaches top_p [b] (1: all) is kept, and `u` [b] is looked up in its cumulative weights.

    total [b, 1]: the whole row's weight, sum(exp(logit - max logit)), when `values` is only its head."""
    cum, kept = _nucleus(values, top_p, total)
    return _lookup(cum, u, cum.gather(1, kept - 1), kept - 1)


def _nucleus(values: torch.Tensor, top_p: torch.Tensor, total: torch.Tensor | None):
    weights = (values - values[:, :1]).exp()  # unnormalised: the leading logit weighs 1
    cum = weights.cumsum(-1)
    total = cum[:, -1:] if total is None else total
    # a column stays while the mass before it is below top_p of the whole (the first one always stays)
    kept = ((cum - weights) < top_p[:, None] * total).sum(-1, keepdim=True)
    return cum, kept.clamp(min=1)


HEAD = 1024  # top-p on the CPU first ranks this many logits, and sorts the whole row only if that is too few


def rank_for_top_p(
    scaled: torch.Tensor, top_p: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(values, ids, total) for `draw_sorted`: each row's logits [b, V] in descending order (ties: lower id
    first), or only their head when that holds every row's nucleus, with the whole row's weight `total`.

    On the CPU a full sort costs far more than `topk(HEAD)` plus one check read back on the host; on an
    accelerator the sort is cheap and a read back would stall the step, so the row is always sorted."""
    total = (scaled - scaled.amax(-1, keepdim=True)).exp().sum(-1, keepdim=True)
    if scaled.device.type == "cpu" and scaled.shape[-1] > HEAD:
        head = scaled.topk(HEAD, -1)
        by_id = head.indices.sort(-1).indices  # the same order as a stable sort of the whole row
        values, ids = head.values.gather(1, by_id), head.indices.gather(1, by_id)
        order = torch.sort(values, dim=-1, descending=True, stable=True).indices
        values, ids = values.gather(1, order), ids.gather(1, order)
        # the nucleus must end above the head's lowest value: a token left out may tie with that one
        _, kept = _nucleus(values, top_p, total)
        if bool((kept < (values > values[:, -1:]).sum(-1, keepdim=True)).all()):
            return values, ids, total
    ranked = torch.sort(scaled, dim=-1, descending=True, stable=True)
    return ranked.values, ranked.indices, total


def draw_unsorted(values: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Column drawn per row [b] from logits [b, V] in any order, with probability softmax(values)."""
    cum = (values - values.amax(-1, keepdim=True)).exp().cumsum(-1)
    return _lookup(cum, u, cum[:, -1:], values.shape[-1] - 1)


def _lookup(cum: torch.Tensor, u: torch.Tensor, total: torch.Tensor, last) -> torch.Tensor:
    # the first column whose cumulative weight exceeds u * total; a zero-weight column never is (its
    # cumulative weight equals its neighbour's), and `last` bounds rounding at the top end
    found = torch.searchsorted(cum, u[:, None] * total, right=True)
    return torch.minimum(found, torch.as_tensor(last, device=found.device)).squeeze(1)


def scale(logits: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """logits [b, W] divided by temperature [b, 1], shifted so each row's largest is 0 (softmax unchanged).

    Shifting first means a tiny temperature sends the others towards -inf (greedy in the limit) instead of
    overflowing the largest to +inf, whose inf - inf would be NaN and draw an arbitrary token."""
    return (logits - logits.amax(-1, keepdim=True)) / temperature


def _to_device(values: list, device: torch.device) -> torch.Tensor:
    # non_blocking: a blocking host-to-device copy would wait for the forward pass still running
    return torch.tensor(values).to(device, non_blocking=True)


def sample_next(
    logits: torch.Tensor, params: list[SamplingParams], keys: torch.Tensor, positions: torch.Tensor
) -> torch.Tensor:
    """Next token ids [B] from logits [B, V]: row i follows params[i] (a host list), draws with keys[i] and
    positions[i] (device tensors [B]; the position the token will take)."""
    logits = logits.float()
    vocab, device = logits.shape[-1], logits.device
    groups: dict[int, list[int]] = {}  # top_k (0: none) -> sampled rows; -1: top-p rows without a top-k
    for i, p in enumerate(params):
        if not p.greedy:
            k = min(p.top_k, vocab) if p.top_k > 0 else (-1 if p.top_p < 1 else 0)
            groups.setdefault(k, []).append(i)
    greedy = len(groups) == 0 or sum(map(len, groups.values())) < len(params)
    out = logits.argmax(-1) if greedy else torch.zeros(len(params), dtype=torch.long, device=device)
    if not groups:
        return out
    u = uniform(keys, positions)
    for k, rows in groups.items():
        whole = len(rows) == len(params)  # the usual case: every row samples alike, nothing to gather
        idx = None if whole else _to_device(rows, device)
        scores = logits if whole else logits.index_select(0, idx)
        draw = u if whole else u.index_select(0, idx)
        # a temperature below float32's range would become 0 (and 0 / 0 NaN): the smallest one is as greedy
        temperature = _to_device([max(params[i].temperature, TINY) for i in rows], device)[:, None]
        top_p = _to_device([params[i].top_p for i in rows], device)
        if k == 0:  # temperature only: no order needed
            token = draw_unsorted(scale(scores, temperature), draw)
        elif k < 0:  # top-p alone: the nucleus's share is of the whole row
            values, ids, total = rank_for_top_p(scale(scores, temperature), top_p)
            token = ids.gather(1, draw_sorted(values, top_p, draw, total)[:, None]).squeeze(1)
        else:  # a positive temperature keeps the order, so rank the raw logits and scale only the kept ones
            ranked = scores.topk(k, -1)
            column = draw_sorted(scale(ranked.values, temperature), top_p, draw)
            token = ranked.indices.gather(1, column[:, None]).squeeze(1)
        out = token if whole else out.index_copy(0, idx, token)
    return out


class BatchSampler:
    """Per-row sampling parameters of a decode batch (host) and seeds (device), and the draw for the rows asked."""

    def __init__(self, max_batch: int, device: torch.device):
        self.params: list[SamplingParams | None] = [None] * max_batch
        self.penalty = torch.ones(max_batch, device=device)
        self.keys = torch.zeros(max_batch, dtype=torch.long, device=device)

    def set_row(self, row: int, params: SamplingParams, seed: int) -> None:
        self.params[row] = params
        self.penalty[row] = params.repetition_penalty
        self.keys[row] = seed_key(seed)

    def clear_row(self, row: int) -> None:
        self.params[row] = None

    def sample(
        self,
        rows: list[int],
        idx: torch.Tensor,
        logits: torch.Tensor,
        positions: torch.Tensor,
        seen: torch.Tensor,
    ) -> torch.Tensor:
        """Tokens [len(rows)] for `rows` (also as device index `idx`), sampled at `positions` [len(rows)]."""
        params = [self.params[r] for r in rows]
        if any(p.repetition_penalty != 1 for p in params):
            logits = apply_repetition_penalty(
                logits.float(), seen.index_select(0, idx), self.penalty.index_select(0, idx)
            )
        return sample_next(logits, params, self.keys.index_select(0, idx), positions)
