"""Prefill and decode through a preallocated KV cache, for one prompt or a batch of prompts of any lengths.

`DecodeBatch` is the one decode loop: `generate` runs a fixed batch through it, and the server's engine
(bessemer.infer.engine) adds and removes rows between its steps (continuous batching). Each row sits at its
own position; a prompt is right-padded with position -1, which the model and the cache treat as empty.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from bessemer.errors import ConfigError
from bessemer.infer.detokenize import IncrementalDetokenizer, StopMatcher
from bessemer.infer.kv_cache import KVCache
from bessemer.infer.sampling import SamplingParams, sample_next
from bessemer.models import Transformer

PREFILL_CHUNK = 512  # prompt tokens per forward: bounds the attention mask a long prompt needs at once
READ_BUCKET = 64  # see KVCache.bucket


@torch.no_grad()
def prefill(
    model: Transformer, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache
) -> torch.Tensor:
    """Run right-padded prompts [B, T] (padding at position -1) into `cache`; logits [B, V] of each last token."""
    bsz = tokens.shape[0]
    last = (positions >= 0).sum(1) - 1
    out = torch.zeros(bsz, model.config.vocab_size, device=tokens.device)
    for start in range(0, tokens.shape[1], PREFILL_CHUNK):
        stop = start + PREFILL_CHUNK
        idx = (last - start).clamp(0, min(stop, tokens.shape[1]) - start - 1)
        logits = model(
            tokens[:, start:stop], positions=positions[:, start:stop], cache=cache, logits_index=idx
        )[:, 0]
        here = (last >= start) & (last < stop)
        out = torch.where(here[:, None], logits.float(), out)
    return out


@torch.no_grad()
def decode_step(
    model: Transformer, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache
) -> torch.Tensor:
    """One token per row: tokens and positions [B, 1] (position -1: idle row); logits [B, V]."""
    return model(tokens, positions=positions, cache=cache)[:, -1].float()


@dataclass
class Sequence:
    """One prompt being decoded: what it asks for, the tokens and text produced, and why it ended."""

    prompt_ids: list[int]
    params: SamplingParams
    tokenizer: object | None = None  # without one, only token ids are produced (stop strings need one)
    output_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None  # "stop" (stop token or string) or "length"
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        if not self.prompt_ids:
            raise ConfigError("prompt: empty; give at least one token of prompt")
        if self.params.stop and self.tokenizer is None:
            raise ConfigError("stop strings need a tokenizer to see the text")
        self._detok = IncrementalDetokenizer(self.tokenizer, self.prompt_ids) if self.tokenizer else None
        self._stops = StopMatcher(self.params.stop)
        self._stop_ids = set(self.params.stop_token_ids)
        if self.params.max_new_tokens == 0:
            self.finish_reason = "length"

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def make_generator(self, device: torch.device) -> None:
        if self.params.greedy or self.generator is not None:
            return
        seed = self.params.seed if self.params.seed is not None else random.SystemRandom().getrandbits(63)
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def push(self, token: int) -> str:
        """Record a sampled token; return the text it makes visible (may be "")."""
        self.output_ids.append(token)
        delta = ""
        if token in self._stop_ids:
            self.finish_reason = "stop"
        elif self._detok is not None:
            delta = self._stops.push(self._detok.add(token))
            if self._stops.stopped:
                self.finish_reason = "stop"
        if self.finish_reason is None and len(self.output_ids) >= self.params.max_new_tokens:
            self.finish_reason = "length"
        if self.finish_reason is not None and self._detok is not None and not self._stops.stopped:
            delta += self._stops.push(self._detok.flush())
            delta += self._stops.flush()
        self.text += delta
        return delta


class DecodeBatch:
    """A KV cache of `max_batch` rows; sequences join free rows (prefill) and decode together (step)."""

    def __init__(
        self,
        model: Transformer,
        max_batch: int,
        max_len: int,
        bucket: int = READ_BUCKET,
        compile: bool = False,
    ):
        """compile: torch.compile the decode step (prefill stays eager); use with bucket=0 for fixed shapes."""
        param = next(model.parameters())
        self.model, self.device = model, param.device
        self._decode_model = torch.compile(model) if compile else model
        self.max_len = max_len
        self.cache = KVCache(model.config, max_batch, max_len, param.device, param.dtype, bucket=bucket)
        self.rows: list[Sequence | None] = [None] * max_batch
        self.next_pos = torch.zeros(max_batch, dtype=torch.long)
        self.last_token = torch.zeros(max_batch, dtype=torch.long)
        self.seen = torch.zeros(max_batch, model.config.vocab_size, dtype=torch.bool, device=param.device)

    @property
    def max_batch(self) -> int:
        return len(self.rows)

    def active(self) -> list[int]:
        return [i for i, s in enumerate(self.rows) if s is not None]

    def free(self) -> list[int]:
        return [i for i, s in enumerate(self.rows) if s is None]

    def fits(self, seq: Sequence) -> bool:
        return len(seq.prompt_ids) + seq.params.max_new_tokens <= self.max_len

    def release(self, row: int) -> None:
        """Free a row (finished or cancelled); its cache slots read as empty from now on."""
        self.rows[row] = None
        self.cache.reset_rows([row])

    def add(self, seqs: list[Sequence]) -> list[tuple[Sequence, str]]:
        """Prefill `seqs` into the lowest free rows and sample each one's first token; returns (seq, text)."""
        free = self.free()
        if len(seqs) > len(free):
            raise ValueError(f"{len(seqs)} sequences for {len(free)} free rows")
        events = []
        todo = []
        for seq in seqs:
            if seq.finished:  # max_new_tokens == 0
                events.append((seq, ""))
                continue
            if not self.fits(seq):
                raise ConfigError(
                    f"prompt of {len(seq.prompt_ids)} tokens + max_new_tokens {seq.params.max_new_tokens} "
                    f"exceeds the context of {self.max_len}; shorten the prompt or ask for fewer tokens"
                )
            seq.make_generator(self.device)
            todo.append((free[len(todo)], seq))
        # rows next to each other prefill in one padded forward
        runs: list[list[tuple[int, Sequence]]] = []
        for row, seq in todo:
            if runs and runs[-1][-1][0] == row - 1:
                runs[-1].append((row, seq))
            else:
                runs.append([(row, seq)])
        for run in runs:
            events += self._prefill_run(run)
        return events

    def _prefill_run(self, run: list[tuple[int, Sequence]]) -> list[tuple[Sequence, str]]:
        first, n = run[0][0], len(run)
        width = max(len(s.prompt_ids) for _, s in run)
        tokens = torch.zeros(n, width, dtype=torch.long)
        positions = torch.full((n, width), -1, dtype=torch.long)
        for j, (row, seq) in enumerate(run):
            t = len(seq.prompt_ids)
            tokens[j, :t] = torch.tensor(seq.prompt_ids)
            positions[j, :t] = torch.arange(t)
            self.rows[row] = seq
            self.next_pos[row] = t
            self.seen[row] = False
            self.seen[row, torch.tensor(seq.prompt_ids, device=self.device)] = True
        view = self.cache.rows(first, first + n)
        logits = prefill(self.model, tokens.to(self.device), positions.to(self.device), view)
        return self._sample([row for row, _ in run], logits)

    def step(self) -> list[tuple[Sequence, str]]:
        """One decode step for every active row; returns (seq, new text) for each, finished rows freed."""
        active = self.active()
        if not active:
            return []
        lo, hi = active[0], active[-1] + 1  # decode only the span of rows in use
        idle = torch.tensor([self.rows[i] is None for i in range(lo, hi)])
        positions = torch.where(idle, -1, self.next_pos[lo:hi])[:, None]
        tokens = self.last_token[lo:hi, None]
        view = self.cache.rows(lo, hi) if (lo, hi) != (0, self.max_batch) else self.cache
        logits = decode_step(self._decode_model, tokens.to(self.device), positions.to(self.device), view)
        self.next_pos[active] += 1
        return self._sample(active, logits[[i - lo for i in active]])

    def _sample(self, rows: list[int], logits: torch.Tensor) -> list[tuple[Sequence, str]]:
        seqs = [self.rows[r] for r in rows]
        idx = torch.tensor(rows, device=self.device)
        chosen = sample_next(logits, [s.params for s in seqs], [s.generator for s in seqs], self.seen[idx])
        chosen = chosen.tolist()
        events = []
        for row, seq, token in zip(rows, seqs, chosen):
            self.last_token[row] = token  # fed at next_pos in the next step
            self.seen[row, token] = True
            events.append((seq, seq.push(token)))
            if seq.finished:
                self.release(row)
        return events


def context_len(model: Transformer, prompts: list[list[int]], max_new_tokens: int) -> int:
    """Cache length for these prompts, refusing what the model's context cannot hold."""
    need = max(len(p) for p in prompts) + max_new_tokens
    if need > model.config.max_seq_len:
        raise ConfigError(
            f"prompt ({max(len(p) for p in prompts)} tokens) + max_new_tokens ({max_new_tokens}) exceeds the "
            f"model's max_seq_len {model.config.max_seq_len}; lower --max-new-tokens or shorten the prompt"
        )
    return need


def generate(
    model: Transformer,
    prompts: list[list[int]],
    params: SamplingParams | list[SamplingParams],
    tokenizer=None,
    compile: bool = False,
) -> list[Sequence]:
    """Decode a batch of prompts (any lengths) together; returns one finished Sequence per prompt."""
    plist = params if isinstance(params, list) else [params] * len(prompts)
    seqs = [Sequence(list(p), sp, tokenizer) for p, sp in zip(prompts, plist)]
    if not seqs:
        return []
    max_len = context_len(model, prompts, max(p.max_new_tokens for p in plist))
    batch = DecodeBatch(model, len(seqs), max_len, bucket=0 if compile else READ_BUCKET, compile=compile)
    batch.add(seqs)
    while batch.active():
        batch.step()
    return seqs


def stream(
    model: Transformer, prompt_ids: list[int], params: SamplingParams, tokenizer, compile: bool = False
) -> Iterator[str]:
    """Decode one prompt, yielding text as soon as it is complete; the Sequence is returned at the end."""
    seq = Sequence(list(prompt_ids), params, tokenizer)
    max_len = context_len(model, [prompt_ids], params.max_new_tokens)
    batch = DecodeBatch(model, 1, max_len, bucket=0 if compile else READ_BUCKET, compile=compile)
    events = batch.add([seq])
    while True:
        for _, text in events:
            if text:
                yield text
        if seq.finished:
            return seq
        events = batch.step()
