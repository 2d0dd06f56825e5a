"""Batched log-likelihood of continuations, with a shared prompt prefix computed once.

A request is a context (token ids) and its continuations (token ids each). When every continuation is one token,
one forward over the context scores them all (the log-softmax at the last position). Otherwise each
continuation is its own row. Rows are sorted by length and batched; a prefix common to every request (the
few-shot part of a subject) is run once and its keys/values are read by every row of every batch.

The model sees exactly context + continuation[:-1], as lm-eval's `hf` backend feeds it, so the log-probabilities
agree to float rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from bessemer.models import Transformer


@dataclass
class ScoreRequest:
    context: list[int]
    continuations: list[list[int]]


@dataclass
class ContinuationScore:
    logprob: float  # sum over the continuation's tokens
    greedy: bool  # every continuation token is the arg-max at its position


class PrefixCache:
    """Keys and values of a shared prefix (batch 1), read by every row of later forwards without copying rows.

    While `recording`, each forward appends its keys/values (building the prefix); afterwards a forward of any
    batch size attends to the prefix plus its own tokens and leaves the prefix unchanged.
    """

    def __init__(self, n_layers: int, device: torch.device):
        self.k: list[torch.Tensor | None] = [None] * n_layers
        self.v: list[torch.Tensor | None] = [None] * n_layers
        self.length = 0
        self.recording = True
        self.device = device

    def prepare(self, positions: torch.Tensor) -> torch.Tensor:
        bsz = positions.shape[0]
        prefix = torch.arange(self.length, device=positions.device).expand(bsz, self.length)
        if self.recording:
            self.length += positions.shape[1]
        return torch.cat([prefix, positions], 1)

    def update(self, layer_id: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.k[layer_id] is not None:
            bsz = k.shape[0]
            k = torch.cat([self.k[layer_id].expand(bsz, -1, -1, -1), k], 2)
            v = torch.cat([self.v[layer_id].expand(bsz, -1, -1, -1), v], 2)
        if self.recording:
            self.k[layer_id], self.v[layer_id] = k, v
        return k, v


@torch.no_grad()
def build_prefix(model: Transformer, prefix: list[int], chunk: int = 512) -> PrefixCache:
    """Run `prefix` once (in chunks, bounding the attention mask) and keep its keys/values."""
    device = next(model.parameters()).device
    cache = PrefixCache(model.config.n_layers, device)
    for start in range(0, len(prefix), chunk):
        ids = torch.tensor([prefix[start : start + chunk]], device=device)
        pos = torch.arange(start, start + ids.shape[1], device=device)[None]
        model(ids, positions=pos, cache=cache, logits_index=torch.zeros(1, dtype=torch.long, device=device))
    cache.recording = False
    return cache


@dataclass
class _Row:
    request: int
    choice: int | None  # None: the row scores every (single-token) continuation at its last position
    tokens: list[int]  # after the shared prefix
    targets: list[int]  # continuation tokens, predicted from the last len(targets) positions


@torch.no_grad()
def score_requests(
    model: Transformer,
    requests: list[ScoreRequest],
    prefix_len: int = 0,
    batch_size: int = 16,
    max_batch_tokens: int = 16384,
    on_request_done: Callable[[int, list[ContinuationScore]], None] | None = None,
) -> list[list[ContinuationScore]]:
    """Score every continuation of every request; the first `prefix_len` tokens are common to all contexts.

    on_request_done(i, scores) is called as each request's last row finishes (progress, per-question caching).
    """
    if not requests:
        return []
    device = next(model.parameters()).device
    first = requests[0].context[:prefix_len]
    if prefix_len and any(r.context[:prefix_len] != first for r in requests):
        raise ValueError("prefix_len exceeds the prefix the requests share")
    prefix_len = min(prefix_len, min(len(r.context) for r in requests) - 1)
    cache = build_prefix(model, requests[0].context[:prefix_len]) if prefix_len > 0 else None
    rows: list[_Row] = []
    left = [0] * len(requests)  # rows still to score, per request
    for i, r in enumerate(requests):
        if all(len(c) == 1 for c in r.continuations):
            rows.append(_Row(i, None, r.context[prefix_len:], []))
        else:
            for j, c in enumerate(r.continuations):
                rows.append(_Row(i, j, (r.context + c)[prefix_len:-1], c))
        left[i] = len(rows) - sum(left)
    out: list[list[ContinuationScore | None]] = [[None] * len(r.continuations) for r in requests]
    order = sorted(range(len(rows)), key=lambda k: -len(rows[k].tokens))
    start = 0
    while start < len(order):
        width = len(rows[order[start]].tokens)
        n = max(1, min(batch_size, max_batch_tokens // max(width, 1)))
        batch = [rows[k] for k in order[start : start + n]]
        start += n
        _score_batch(model, batch, requests, out, prefix_len, cache, device)
        for row in batch:
            left[row.request] -= 1
            if left[row.request] == 0 and on_request_done is not None:
                on_request_done(row.request, out[row.request])
    return out  # type: ignore[return-value]


def _score_batch(model, batch: list[_Row], requests, out, prefix_len: int, cache, device) -> None:
    width = max(len(r.tokens) for r in batch)
    tokens = torch.zeros(len(batch), width, dtype=torch.long)
    positions = torch.full((len(batch), width), -1, dtype=torch.long)
    for i, r in enumerate(batch):
        tokens[i, : len(r.tokens)] = torch.tensor(r.tokens)
        positions[i, : len(r.tokens)] = torch.arange(prefix_len, prefix_len + len(r.tokens))
    tokens, positions = tokens.to(device), positions.to(device)
    if cache is None:
        cache = PrefixCache(model.config.n_layers, device)
        cache.recording = False
    lengths = torch.tensor([len(r.tokens) for r in batch], device=device)
    if all(r.choice is None for r in batch):
        logits = model(tokens, positions=positions, cache=cache, logits_index=lengths - 1)[:, 0]
        logp = torch.log_softmax(logits.float(), -1)
        best = logp.argmax(-1).tolist()
        for i, r in enumerate(batch):
            conts = requests[r.request].continuations
            ids = [c[0] for c in conts]
            vals = logp[i, ids].tolist()
            for j, (tid, val) in enumerate(zip(ids, vals)):
                out[r.request][j] = ContinuationScore(val, best[i] == tid)
        return
    logits = model(tokens, positions=positions, cache=cache)
    logp = torch.log_softmax(logits.float(), -1)
    for i, r in enumerate(batch):
        if r.choice is None:  # a single-token request batched with multi-token rows
            last = logp[i, len(r.tokens) - 1]
            best = int(last.argmax())
            for j, c in enumerate(requests[r.request].continuations):
                out[r.request][j] = ContinuationScore(float(last[c[0]]), best == c[0])
            continue
        n = len(r.targets)
        at = logp[i, len(r.tokens) - n : len(r.tokens)]
        target = torch.tensor(r.targets, device=device)
        val = float(at.gather(1, target[:, None]).sum())
        greedy = bool((at.argmax(-1) == target).all())
        out[r.request][r.choice] = ContinuationScore(val, greedy)


def shared_prefix_len(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
