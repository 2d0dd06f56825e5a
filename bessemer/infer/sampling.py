"""Choosing the next token for a whole batch at once: greedy, temperature, top-k, top-p, repetition penalty.

Every row has its own parameters (held as tensors, so one set of kernels serves the batch) and its own seed.
Randomness is a counter-based hash of (seed, position, token id): a row draws the same numbers whatever else
is in the batch and whenever it joined, with no generator object per row and no host round trip. The draw is
the exponential-race form of sampling (argmax of p / E, E ~ Exp(1)), which picks token i with probability p_i.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from bessemer.errors import ConfigError

M32 = 0xFFFFFFFF


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


def filter_top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Mask (to -inf) all but each row's `top_k` largest logits (0: all; ties at the k-th stay), then all but
    the smallest set of most likely tokens whose probabilities reach `top_p` (1: all). [B, V], [B], [B]."""
    vocab = logits.shape[-1]
    ordered, order = logits.sort(-1, descending=True)
    k = torch.where(top_k > 0, top_k, vocab).clamp(max=vocab)
    kth = ordered.gather(1, (k - 1)[:, None])
    ordered = ordered.masked_fill(ordered < kth, float("-inf"))
    probs = ordered.softmax(-1)
    # a token is dropped when the tokens before it already reach top_p; the most likely one always stays
    drop = (probs.cumsum(-1) - probs) >= top_p[:, None].to(probs.dtype)
    ordered = ordered.masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(1, order, ordered)


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


def exponential_noise(keys: torch.Tensor, positions: torch.Tensor, vocab: int) -> torch.Tensor:
    """Exp(1) draws [B, V], a pure function of each row's key [B] and position [B]."""
    row = _mix32(keys ^ _mix32(positions & M32))
    ids = torch.arange(vocab, device=keys.device, dtype=torch.int64)
    bits = _mix32(row[:, None] ^ ((ids * 0x61C88647) & M32))
    uniform = ((bits >> 8).to(torch.float32) + 0.5) / float(1 << 24)  # in (0, 1)
    return -torch.log(uniform)


def sample_next(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    keys: torch.Tensor,
    positions: torch.Tensor,
    *,
    sampling: bool = True,
    filtering: bool = True,
) -> torch.Tensor:
    """Next token ids [B] from logits [B, V]; per-row temperature (0: greedy), top_k, top_p, keys, positions.

    sampling / filtering: whether any row samples / uses top-k or top-p (known on the host; skips the work).
    """
    logits = logits.float()
    greedy = logits.argmax(-1)
    if not sampling:
        return greedy
    scaled = logits / torch.where(temperature > 0, temperature, 1.0)[:, None]
    if filtering:
        scaled = filter_top_k_top_p(scaled, top_k, top_p)
    drawn = (scaled - torch.log(exponential_noise(keys, positions, logits.shape[-1]))).argmax(-1)
    return torch.where(temperature > 0, drawn, greedy)


class BatchSampler:
    """Per-row sampling parameters of a decode batch, as device tensors, and the draw for the rows asked."""

    def __init__(self, max_batch: int, device: torch.device):
        self.params: list[SamplingParams | None] = [None] * max_batch
        self.temperature = torch.zeros(max_batch, device=device)
        self.top_k = torch.zeros(max_batch, dtype=torch.long, device=device)
        self.top_p = torch.ones(max_batch, device=device)
        self.penalty = torch.ones(max_batch, device=device)
        self.keys = torch.zeros(max_batch, dtype=torch.long, device=device)

    def set_row(self, row: int, params: SamplingParams, seed: int) -> None:
        self.params[row] = params
        values = torch.tensor([params.temperature, params.top_p, params.repetition_penalty])
        self.temperature[row], self.top_p[row], self.penalty[row] = values.to(self.temperature.device)
        self.top_k[row] = params.top_k
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
            logits = apply_repetition_penalty(logits.float(), seen[idx], self.penalty[idx])
        return sample_next(
            logits,
            self.temperature[idx],
            self.top_k[idx],
            self.top_p[idx],
            self.keys[idx],
            positions,
            sampling=any(not p.greedy for p in params),
            filtering=any(not p.greedy and (p.top_k > 0 or p.top_p < 1) for p in params),
        )
