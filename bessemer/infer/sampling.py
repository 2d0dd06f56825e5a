"""Choosing the next token: greedy, temperature, top-k, top-p and repetition penalty, per row and seeded."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from bessemer.errors import ConfigError


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
        if self.temperature < 0:
            raise ConfigError(f"generate.temperature={self.temperature}: use 0 (greedy) or more")
        if self.top_k < 0:
            raise ConfigError(f"generate.top_k={self.top_k}: use 0 (off) or more")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"generate.top_p={self.top_p}: use a value in (0, 1]")
        if self.repetition_penalty <= 0:
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


def filter_top_k(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Keep the `top_k` largest logits of a row [V] (ties at the k-th value stay)."""
    if top_k <= 0 or top_k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, top_k).values[-1]
    return logits.masked_fill(logits < kth, float("-inf"))


def filter_top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probabilities sum to at least `top_p` (row [V])."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=True)
    probs = sorted_logits.softmax(-1)
    # a token is dropped when the tokens before it already reach top_p; the most likely one always stays
    drop = (probs.cumsum(-1) - probs) >= top_p
    return logits.masked_fill(drop.scatter(0, order, drop), float("-inf"))


def sample_next(
    logits: torch.Tensor,
    params: list[SamplingParams],
    generators: list[torch.Generator | None],
    seen: torch.Tensor | None = None,
) -> torch.Tensor:
    """Next token ids [B] from logits [B, V], row i decoded with params[i] and drawing from generators[i].

    seen: [B, V] bool of the tokens each row holds so far (prompt and output), for the repetition penalty.
    """
    logits = logits.float()
    penalty = torch.tensor([p.repetition_penalty for p in params], device=logits.device)
    if seen is not None and bool((penalty != 1).any()):
        logits = apply_repetition_penalty(logits, seen, penalty)
    out = logits.argmax(-1)
    for i, p in enumerate(params):
        if p.greedy:
            continue
        row = filter_top_p(filter_top_k(logits[i] / p.temperature, p.top_k), p.top_p)
        probs = row.softmax(-1)
        out[i] = torch.multinomial(probs, 1, generator=generators[i])[0]
    return out
