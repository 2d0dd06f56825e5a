"""Prefill and decode through a preallocated KV cache, for one prompt or a batch of prompts of any lengths.

`DecodeBatch` is the one decode loop: `generate` runs a fixed batch through it, and the server's engine
(bessemer.infer.engine) adds and removes rows between its steps (continuous batching). Each row sits at its
own position; a prompt is right-padded with position -1, which the model and the cache treat as empty.
`generate` uses the static cache (one row per prompt, the shape `--compile` needs); the engine uses the paged
one, where rows with the same prompt prefix share its blocks and prefill only what follows.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from bessemer.errors import ConfigError
from bessemer.infer.blocks import Allocation, BlockManager
from bessemer.infer.detokenize import IncrementalDetokenizer, StopMatcher
from bessemer.infer.kv_cache import KVCache, PagedKVCache
from bessemer.infer.request import stop_token_ids  # noqa: F401 (callers such as eval import it from here)
from bessemer.infer.sampling import BatchSampler, SamplingParams
from bessemer.models import Transformer

PREFILL_CHUNK = 512  # prompt tokens per forward: bounds the attention mask a long prompt needs at once
READ_BUCKET = 64  # see KVCache.bucket
BLOCK_SIZE = 16  # positions per block of the paged cache


@torch.no_grad()
def prefill(
    model: Transformer, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache
) -> torch.Tensor:
    """Run right-padded prompts [B, T] (padding at position -1) into `cache`; logits [B, V] of each last token.

    tokens and positions may be on the CPU (they move chunk by chunk; the cache learns each chunk's highest
    position from the host copy instead of reading it back from the device).
    """
    device = next(model.parameters()).device
    bsz = tokens.shape[0]
    last = ((positions >= 0).sum(1) - 1).to(device)
    out = torch.zeros(bsz, model.config.vocab_size, device=device)
    # past its trained context dynamic NTK rotates every prompt key by the prompt's full length: one piece
    cfg = model.config
    rescaled = cfg.rope_scaling == "dynamic" and int(positions.max()) >= (
        cfg.rope_original_max_seq_len or cfg.max_seq_len
    )
    chunk_len = tokens.shape[1] if rescaled else PREFILL_CHUNK
    for start in range(0, tokens.shape[1], chunk_len):
        stop = start + chunk_len
        chunk = positions[:, start:stop]
        if chunk.device.type == "cpu":
            cache.next_top = int(chunk.max())
        idx = (last - start).clamp(0, min(stop, tokens.shape[1]) - start - 1)
        logits = model(
            tokens[:, start:stop].to(device), positions=chunk.to(device), cache=cache, logits_index=idx
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
    seed: int | None = None  # the sampling seed used (params.seed, else drawn when the sequence starts)
    # with params.logprobs: per output token, its log-probability and the top (id, log-probability) pairs
    logprobs: list[tuple[float, list[tuple[int, float]]]] = field(default_factory=list)

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

    def pick_seed(self) -> int:
        if self.seed is None:
            self.seed = (
                self.params.seed if self.params.seed is not None else random.SystemRandom().getrandbits(63)
            )
        return self.seed

    def push(self, token: int, logprob: tuple[float, list[tuple[int, float]]] | None = None) -> str:
        """Record a sampled token (and its log-probabilities); return the text it makes visible (may be "")."""
        self.output_ids.append(token)
        if logprob is not None:
            self.logprobs.append(logprob)
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
    """A KV cache of `max_batch` rows; sequences join free rows (prefill) and decode together (step).

    With `paged`, a sequence joins only when the pool gives it blocks for its prompt and all of its new
    tokens (`admit` takes as many as can join now), so a running row never runs out of cache.

    Row state that the model and the sampler read (last token, sampling parameters, tokens seen) lives on the
    device; positions are kept on the host, where they are known without asking. The one read back per step
    is the chosen token ids, which the host needs to emit text and see stops.
    """

    def __init__(
        self,
        model: Transformer,
        max_batch: int,
        max_len: int,
        bucket: int = READ_BUCKET,
        compile: bool = False,
        paged: bool = False,
        kv_blocks: int = 0,
        prefix_cache: bool = True,
    ):
        """compile: torch.compile the decode step (prefill stays eager); use with bucket=0 for fixed shapes.

        paged: keep the cache in blocks of BLOCK_SIZE positions, `kv_blocks` of them (0: enough for every
        row's full context), shared between rows holding the same prompt prefix unless `prefix_cache` is
        off. A sequence joins only when it can get the blocks for its prompt and all its new tokens.
        """
        if paged and compile:
            raise ConfigError("compile: the compiled decode step uses the static cache; turn paging off")
        param = next(model.parameters())
        self.model, self.device = model, param.device
        self.compiled = compile
        self._decode_model = torch.compile(model) if compile else model
        self.max_len = max_len
        dtype = _cache_dtype(model)
        self.blocks: BlockManager | None = None
        if paged:
            kv_blocks = kv_blocks or max_batch * -(-max_len // BLOCK_SIZE)
            self.blocks = BlockManager(kv_blocks, BLOCK_SIZE, prefix_cache)
            self.cache = PagedKVCache(
                model.config, kv_blocks, BLOCK_SIZE, max_batch, max_len, param.device, dtype
            )
        else:
            self.cache = KVCache(model.config, max_batch, max_len, param.device, dtype, bucket=bucket)
        self.allocs: list[Allocation | None] = [None] * max_batch
        self.prefilled_tokens = 0  # prompt positions run through the model (cached prefixes are not)
        self.rows: list[Sequence | None] = [None] * max_batch
        self.next_pos = torch.zeros(max_batch, dtype=torch.long)  # host: the position each row decodes next
        self.last_token = torch.zeros(max_batch, dtype=torch.long, device=param.device)
        self.seen = torch.zeros(max_batch, model.config.vocab_size, dtype=torch.bool, device=param.device)
        self.sampler = BatchSampler(max_batch, param.device)

    @property
    def max_batch(self) -> int:
        return len(self.rows)

    def active(self) -> list[int]:
        return [i for i, s in enumerate(self.rows) if s is not None]

    def free(self) -> list[int]:
        return [i for i, s in enumerate(self.rows) if s is None]

    def fits(self, seq: Sequence) -> bool:
        """Whether `seq` can ever join: its context, and (paged) its blocks when the pool is all free."""
        length = len(seq.prompt_ids) + seq.params.max_new_tokens
        if self.blocks is not None and self.blocks.blocks_for(length) > self.blocks.num_blocks:
            return False
        return length <= self.max_len

    def release(self, row: int) -> None:
        """Free a row (finished or cancelled); its cache slots read as empty from now on (paged: its
        blocks go back to the pool, those holding a full block of tokens stay cached for later prompts)."""
        seq, alloc = self.rows[row], self.allocs[row]
        self.rows[row] = self.allocs[row] = None
        self.sampler.clear_row(row)
        if alloc is None:
            self.cache.reset_rows([row])
            return
        self.blocks.extend_names(alloc, seq.prompt_ids + seq.output_ids, int(self.next_pos[row]))
        self.blocks.release(alloc)

    def add(self, seqs: list[Sequence]) -> list[tuple[Sequence, str]]:
        """Prefill `seqs` into free rows and sample each one's first token; returns (seq, text)."""
        if len([s for s in seqs if not s.finished]) > len(self.free()):
            raise ValueError(f"{len(seqs)} sequences for {len(self.free())} free rows")
        events: list[tuple[Sequence, str]] = []
        while seqs:
            taken, got = self.admit(seqs)
            if not taken:
                raise ConfigError(
                    f"kv cache: {self.blocks.available} free blocks of {BLOCK_SIZE} positions cannot hold a "
                    f"prompt of {len(seqs[0].prompt_ids)} tokens + {seqs[0].params.max_new_tokens} new ones; "
                    "give the cache more blocks"
                )
            events += got
            seqs = seqs[taken:]
        return events

    def admit(self, seqs: list[Sequence]) -> tuple[int, list[tuple[Sequence, str]]]:
        """Prefill as many of the leading `seqs` as free rows (and blocks) allow now, sampling each one's
        first token; returns how many joined and their (seq, text) events."""
        for seq in seqs:
            if not seq.finished and not self.fits(seq):
                raise ConfigError(
                    f"prompt of {len(seq.prompt_ids)} tokens + max_new_tokens {seq.params.max_new_tokens} "
                    f"exceeds the context of {self.max_len}; shorten the prompt or ask for fewer tokens"
                )
        if self.blocks is not None:
            return self._admit_paged(seqs)
        free = self.free()
        events, todo, taken = [], [], 0
        for seq in seqs:
            if seq.finished:  # max_new_tokens == 0
                events.append((seq, ""))
            elif len(todo) < len(free):
                todo.append((free[len(todo)], seq))
            else:
                break
            taken += 1
        # rows next to each other prefill in one padded forward
        runs: list[list[tuple[int, Sequence]]] = []
        for row, seq in todo:
            if runs and runs[-1][-1][0] == row - 1:
                runs[-1].append((row, seq))
            else:
                runs.append([(row, seq)])
        for run in runs:
            events += self._prefill_run(run)
        return taken, events

    def _admit_paged(self, seqs: list[Sequence]) -> tuple[int, list[tuple[Sequence, str]]]:
        free = self.free()
        events, group, taken = [], [], 0
        for seq in seqs:
            if seq.finished:
                events.append((seq, ""))
                taken += 1
                continue
            if len(group) == len(free):
                break
            alloc = self.blocks.allocate(seq.prompt_ids, len(seq.prompt_ids) + seq.params.max_new_tokens)
            if alloc is None:  # no blocks now, or its prefix is being computed in this group: next time
                break
            row = free[len(group)]
            # from here a failure releases the blocks, naming only those known to be written
            self.rows[row], self.allocs[row] = seq, alloc
            self.next_pos[row] = alloc.cached_tokens
            self.cache.set_table(row, alloc.table)
            group.append((row, seq, alloc))
            taken += 1
        if group:
            events += self._prefill_rows(group)
        return taken, events

    def _prefill_rows(self, group: list[tuple[int, Sequence, Allocation]]) -> list[tuple[Sequence, str]]:
        """Prefill each row's prompt from its first uncached position (paged cache)."""
        n = len(group)
        width = max(len(s.prompt_ids) - a.cached_tokens for _, s, a in group)
        tokens = torch.zeros(n, width, dtype=torch.long)
        positions = torch.full((n, width), -1, dtype=torch.long)
        seen = torch.zeros(n, self.seen.shape[1], dtype=torch.bool)
        for j, (row, seq, alloc) in enumerate(group):
            t, cached = len(seq.prompt_ids), alloc.cached_tokens
            tokens[j, : t - cached] = torch.tensor(seq.prompt_ids[cached:])
            positions[j, : t - cached] = torch.arange(cached, t)
            seen[j, seq.prompt_ids] = True
            self.next_pos[row] = t
            self.sampler.set_row(row, seq.params, seq.pick_seed())
            self.prefilled_tokens += t - cached
        rows = [row for row, _, _ in group]
        self.seen[torch.tensor(rows, device=self.device)] = seen.to(self.device)
        logits = prefill(self.model, tokens, positions, self.cache.rows(rows))
        for _, _, alloc in group:  # before sampling, which may finish and release a row at once
            self.blocks.computed(alloc)
        return self._sample(rows, logits)

    def _prefill_run(self, run: list[tuple[int, Sequence]]) -> list[tuple[Sequence, str]]:
        first, n = run[0][0], len(run)
        width = max(len(s.prompt_ids) for _, s in run)
        tokens = torch.zeros(n, width, dtype=torch.long)
        positions = torch.full((n, width), -1, dtype=torch.long)
        for j, (row, seq) in enumerate(run):
            t = len(seq.prompt_ids)
            tokens[j] = seq.prompt_ids[0]  # padding repeats a real token, so `seen` marks nothing extra
            tokens[j, :t] = torch.tensor(seq.prompt_ids)
            positions[j, :t] = torch.arange(t)
            self.rows[row] = seq
            self.next_pos[row] = t
            self.sampler.set_row(row, seq.params, seq.pick_seed())
        self.seen[first : first + n] = False
        self.seen[first : first + n].scatter_(1, tokens.to(self.device), True)
        view = self.cache.rows(first, first + n)
        self.prefilled_tokens += int((positions >= 0).sum())
        logits = prefill(self.model, tokens, positions, view)
        return self._sample([row for row, _ in run], logits)

    def step(self) -> list[tuple[Sequence, str]]:
        """One decode step for every active row; returns (seq, new text) for each, finished rows freed."""
        active = self.active()
        if not active:
            return []
        if self.blocks is not None:  # a paged batch is made of exactly the active rows
            positions = self.next_pos[active][:, None]
            view = self.cache.rows(active)
            view.next_top = int(positions.max())
            self.next_pos[active] += 1  # where the tokens sampled now go (positions above is a copy)
            prepared = self._prepare_sample(active)  # host-to-device copies before the forward is queued
            logits = decode_step(self.model, self.last_token[active, None], positions.to(self.device), view)
            return self._sample(active, logits, prepared)
        # decode only the span of rows in use; a compiled step keeps one shape and decodes every row
        lo, hi = (0, self.max_batch) if self.compiled else (active[0], active[-1] + 1)
        idle = torch.tensor([self.rows[i] is None for i in range(lo, hi)])
        positions = torch.where(idle, -1, self.next_pos[lo:hi])[:, None]
        view = self.cache.rows(lo, hi) if (lo, hi) != (0, self.max_batch) else self.cache
        view.next_top = int(positions.max())
        self.next_pos[active] += 1  # where the tokens sampled now go (positions above is a copy)
        prepared = self._prepare_sample(active)  # host-to-device copies before the forward is queued
        keep = torch.tensor([i - lo for i in active]).to(self.device) if len(active) < hi - lo else None
        logits = decode_step(
            self._decode_model, self.last_token[lo:hi, None], positions.to(self.device), view
        )
        if keep is not None:
            logits = logits[keep]
        return self._sample(active, logits, prepared)

    def _prepare_sample(self, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows' index and the positions their next tokens go to (which key their random draws), on the
        device. Made before a forward is queued: a copy from host memory would otherwise wait for it."""
        return torch.tensor(rows).to(self.device), self.next_pos[rows].to(self.device)

    def _sample(
        self, rows: list[int], logits: torch.Tensor, prepared: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> list[tuple[Sequence, str]]:
        idx, positions = prepared if prepared is not None else self._prepare_sample(rows)
        chosen = self.sampler.sample(rows, idx, logits, positions, self.seen)
        self.last_token[idx] = chosen
        self.seen[idx, chosen] = True
        logprobs = _logprobs([self.rows[r].params.logprobs for r in rows], logits, chosen)
        events = []
        for i, (row, token) in enumerate(zip(rows, chosen.tolist())):  # the one read back: text needs ids
            seq = self.rows[row]
            events.append((seq, seq.push(token, logprobs.get(i))))
            if seq.finished:
                self.release(row)
        return events


def _logprobs(asked: list[int | None], logits: torch.Tensor, chosen: torch.Tensor) -> dict:
    """{batch index: (chosen token's log-probability, top [(id, log-probability)])} for the rows that asked
    (`asked[i]`: how many top ones; None: none), from the model's own distribution (before sampling settings)."""
    want = [i for i, k in enumerate(asked) if k is not None]
    if not want:
        return {}
    sel = torch.tensor(want, device=logits.device)
    logp = torch.log_softmax(logits.index_select(0, sel).float(), -1)
    picked = logp.gather(1, chosen.index_select(0, sel)[:, None]).squeeze(1).tolist()
    top = logp.topk(max(asked[i] for i in want), -1)
    ids, values = top.indices.tolist(), top.values.tolist()
    return {i: (picked[j], list(zip(ids[j][: asked[i]], values[j][: asked[i]]))) for j, i in enumerate(want)}


def _cache_dtype(model: Transformer) -> torch.dtype:
    """The activations' dtype (an int8-weight model still computes in its norm's dtype)."""
    return model.norm.weight.dtype if model.norm is not None else next(model.parameters()).dtype


def context_len(model: Transformer, prompts: list[list[int]], max_new_tokens: int) -> int:
    """Cache length for these prompts, refusing what the model's context cannot hold."""
    need = max(len(p) for p in prompts) + max_new_tokens
    if need > model.config.context_len:
        raise ConfigError(
            f"prompt ({max(len(p) for p in prompts)} tokens) + max_new_tokens ({max_new_tokens}) exceeds the "
            f"model's context of {model.config.context_len} tokens; lower --max-new-tokens or shorten the prompt"
        )
    return need


COMPILED_LEN_STEP = 256


def cache_len(model: Transformer, prompts: list[list[int]], max_new_tokens: int, compile: bool) -> int:
    """context_len, rounded up for a compiled step: the graph is specialised on the cache length, so one length
    per 256 keeps chat turns and calls on one graph instead of recompiling (and falling back to eager)."""
    need = context_len(model, prompts, max_new_tokens)
    if not compile:
        return need
    return min(-(-need // COMPILED_LEN_STEP) * COMPILED_LEN_STEP, model.config.context_len)


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
    max_len = cache_len(model, prompts, max(p.max_new_tokens for p in plist), compile)
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
    max_len = cache_len(model, [prompt_ids], params.max_new_tokens, compile)
    batch = DecodeBatch(model, 1, max_len, bucket=0 if compile else READ_BUCKET, compile=compile)
    events = batch.add([seq])
    while True:
        for _, text in events:
            if text:
                yield text
        if seq.finished:
            return seq
        events = batch.step()
