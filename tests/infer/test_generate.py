"""Greedy decoding through the cache equals full recompute and transformers' `generate`, batched or not."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bessemer.infer.generate import PREFILL_CHUNK, DecodeBatch, Sequence, generate, prefill
from bessemer.infer.kv_cache import KVCache
from bessemer.infer.sampling import SamplingParams
from bessemer.models import ModelConfig, build_model
from tests.models.hf_reference import copy_into_hf, hf_llama_config

PROMPTS = [[1, 5, 9, 33, 2, 7, 8], [4, 4], [9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]]
NEW = 24


def tiny(**kw) -> ModelConfig:
    base = dict(vocab_size=257, dim=64, n_layers=2, n_heads=4, ffn_dim=160, norm_eps=1e-5, max_seq_len=128)
    return ModelConfig(**{**base, **kw})


def greedy_recompute(model, prompt: list[int], n: int) -> list[int]:
    """The reference: run the whole sequence again for every new token, no cache."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt) :]


FAMILIES = {
    "llama": ({}, "LlamaForCausalLM", "LlamaConfig"),
    "mistral-window": (
        {"family": "mistral", "n_kv_heads": 2, "sliding_window": 8},
        "MistralForCausalLM",
        "MistralConfig",
    ),
    "aquila": ({"family": "aquila", "vocab_size": 301, "norm_eps": 1e-6}, "LlamaForCausalLM", "LlamaConfig"),
    # dynamic NTK trained on 16 positions, stretched 4x: the prompts and their tokens run well past 16, and
    # batched rows of different lengths must each rotate as transformers does for that prompt alone
    "llama-dynamic-ntk": (
        {"rope_scaling": "dynamic", "rope_factor": 4.0, "max_seq_len": 16},
        "LlamaForCausalLM",
        "LlamaConfig",
    ),
    "baichuan2-7b": (
        {"family": "baichuan2", "norm_head": True, "norm_eps": 1e-6},
        "LlamaForCausalLM",
        "LlamaConfig",
    ),
}


@pytest.mark.parametrize(
    "kw",
    [
        FAMILIES["llama"][0],
        FAMILIES["mistral-window"][0],
        {"family": "baichuan2", "position": "alibi", "norm_head": True},
    ],
    ids=["llama", "mistral-window", "baichuan2-13b-alibi"],
)
def test_batched_cached_greedy_equals_full_recompute(kw):
    model = build_model(tiny(**kw), seed=0).eval()
    seqs = generate(model, PROMPTS, SamplingParams(max_new_tokens=NEW))
    for prompt, seq in zip(PROMPTS, seqs):
        assert seq.output_ids == greedy_recompute(model, prompt, NEW)
        assert seq.finish_reason == "length"


def test_sliding_window_matters_past_the_window():
    # decoding runs well past the 8-token window, so the window must change the tokens produced
    windowed = build_model(tiny(n_kv_heads=2, sliding_window=8), seed=0).eval()
    full = build_model(tiny(n_kv_heads=2), seed=0).eval()
    a = generate(windowed, PROMPTS[:1], SamplingParams(max_new_tokens=NEW))[0].output_ids
    b = generate(full, PROMPTS[:1], SamplingParams(max_new_tokens=NEW))[0].output_ids
    assert a != b


@pytest.mark.parametrize("family", list(FAMILIES))
def test_greedy_equals_transformers_generate(family):
    transformers = pytest.importorskip("transformers")
    kw, hf_cls, cfg_cls = FAMILIES[family]
    cfg = tiny(**kw)
    model = build_model(cfg, seed=0).eval()
    hf = getattr(transformers, hf_cls)(hf_llama_config(cfg, cfg_cls)).eval()
    copy_into_hf(model, hf)
    ours = generate(model, PROMPTS, SamplingParams(max_new_tokens=NEW))
    for prompt, seq in zip(PROMPTS, ours):
        with torch.no_grad():
            ref = hf.generate(
                torch.tensor([prompt]),
                attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                do_sample=False,
                max_new_tokens=NEW,
                min_new_tokens=NEW,
                eos_token_id=None,
                pad_token_id=0,
            )
        assert seq.output_ids == ref[0, len(prompt) :].tolist()


def test_dynamic_ntk_prefill_equals_transformers_for_long_and_batched_prompts():
    """Past the trained context each prompt's keys rotate by its own full length, as transformers' forward of
    that prompt alone: whether batched with a longer prompt, or longer than one prefill chunk."""
    transformers = pytest.importorskip("transformers")
    cfg = tiny(rope_scaling="dynamic", rope_factor=8.0, max_seq_len=96)
    model = build_model(cfg, seed=0).eval()
    hf = transformers.LlamaForCausalLM(hf_llama_config(cfg)).eval()
    copy_into_hf(model, hf)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 257, (n,), generator=g) for n in (PREFILL_CHUNK + 90, 200, 120)]
    width = len(prompts[0])
    tokens, positions = torch.zeros(3, width, dtype=torch.long), torch.full((3, width), -1)
    for i, p in enumerate(prompts):
        tokens[i, : len(p)], positions[i, : len(p)] = p, torch.arange(len(p))
    cache = KVCache(cfg, 3, width, torch.device("cpu"), torch.float32, bucket=0)
    ours = prefill(model, tokens, positions, cache)
    # transformers keeps the longest length seen and rescales only to grow past it: shortest prompt first
    for i, p in sorted(enumerate(prompts), key=lambda ip: len(ip[1])):
        with torch.no_grad():
            ref = hf(p[None]).logits[0, -1]
        torch.testing.assert_close(ours[i], ref, atol=2e-4, rtol=0)


def test_rows_joining_mid_flight_decode_as_if_alone():
    # continuous batching: a sequence prefilled into a free row while others decode gets the same tokens
    model = build_model(tiny(n_kv_heads=2, sliding_window=8), seed=0).eval()
    batch = DecodeBatch(model, max_batch=3, max_len=64)
    seqs = [Sequence(p, SamplingParams(max_new_tokens=NEW - 4 * i)) for i, p in enumerate(PROMPTS)]
    batch.add(seqs[:1])
    for _ in range(5):
        batch.step()
    batch.add(seqs[1:2])
    for _ in range(3):
        batch.step()
    batch.add(seqs[2:])
    while batch.active():
        batch.step()
    assert batch.free() == [0, 1, 2]
    for seq in seqs:
        assert seq.output_ids == greedy_recompute(model, seq.prompt_ids, seq.params.max_new_tokens)


def test_stop_token_ends_generation_and_is_counted():
    model = build_model(tiny(), seed=0).eval()
    want = greedy_recompute(model, PROMPTS[0], NEW)
    stop = want[5]
    seq = generate(model, PROMPTS[:1], SamplingParams(max_new_tokens=NEW, stop_token_ids=[stop]))[0]
    assert seq.output_ids == want[: want.index(stop) + 1]
    assert seq.finish_reason == "stop"


def test_seeded_sampling_is_reproducible_and_batch_independent():
    model = build_model(tiny(), seed=0).eval()
    params = SamplingParams(max_new_tokens=16, temperature=1.0, top_k=50, top_p=0.9, seed=7)
    alone = generate(model, PROMPTS[:1], params)[0].output_ids
    batched = generate(
        model, PROMPTS, [params, SamplingParams(max_new_tokens=16, temperature=0.8, seed=1), params]
    )
    assert batched[0].output_ids == alone
    other = generate(model, PROMPTS[:1], SamplingParams(**{**params.__dict__, "seed": 8}))[0].output_ids
    assert other != alone
    assert alone != greedy_recompute(model, PROMPTS[0], 16)


def test_repetition_penalty_avoids_repeats():
    model = build_model(tiny(), seed=0).eval()
    plain = generate(model, PROMPTS[:1], SamplingParams(max_new_tokens=40))[0].output_ids
    penalised = generate(model, PROMPTS[:1], SamplingParams(max_new_tokens=40, repetition_penalty=100.0))[0]
    assert len(set(plain)) < len(plain)  # the random model loops when greedy
    assert not set(penalised.output_ids) & set(PROMPTS[0])
    assert len(set(penalised.output_ids)) == len(penalised.output_ids)


def test_context_overflow_is_refused():
    from bessemer.errors import ConfigError

    model = build_model(tiny(max_seq_len=16), seed=0).eval()
    exact = generate(model, PROMPTS[:1], SamplingParams(max_new_tokens=16 - len(PROMPTS[0])))[0]
    assert exact.output_ids == greedy_recompute(model, PROMPTS[0], 16 - len(PROMPTS[0]))
    with pytest.raises(ConfigError, match="context of 16 tokens"):
        generate(model, PROMPTS[:1], SamplingParams(max_new_tokens=17 - len(PROMPTS[0])))


SYSTEM = [(11 * j) % 250 + 3 for j in range(40)]  # a shared system prompt: two full blocks of 16 and a part


@pytest.mark.parametrize(
    "params",
    [SamplingParams(max_new_tokens=12), SamplingParams(max_new_tokens=12, temperature=0.9, top_k=40, seed=3)],
    ids=["greedy", "seeded-sampling"],
)
def test_prefix_cache_prefills_only_new_tokens_and_changes_no_token(params):
    model = build_model(tiny(n_kv_heads=2), seed=0).eval()
    a, b, c = SYSTEM + [1, 2, 3, 4, 5], SYSTEM + [6, 7, 8, 9, 10, 11, 12], SYSTEM + [13]
    want = {tuple(p): generate(model, [p], params)[0].output_ids for p in (a, b, c)}  # static cache
    shared = 32  # the prompt's full blocks before its last token

    batch = DecodeBatch(model, max_batch=3, max_len=64, paged=True)
    first = Sequence(a, params)
    batch.add([first])
    assert batch.prefilled_tokens == len(a)
    for _ in range(4):
        batch.step()
    second = Sequence(b, params)
    batch.add([second])  # joins while the first is decoding: shares its live blocks
    assert batch.prefilled_tokens == len(a) + len(b) - shared
    while batch.active():
        batch.step()
    third = Sequence(c, params)
    batch.add([third])  # after both finished: the blocks are still cached
    assert batch.prefilled_tokens == len(a) + len(b) + len(c) - 2 * shared
    while batch.active():
        batch.step()
    one = Sequence(a, dataclasses.replace(params, max_new_tokens=1))  # finishes (and frees) as it joins
    batch.add([one])
    assert one.output_ids == want[tuple(a)][:1] and batch.blocks.available == batch.blocks.num_blocks
    for seq in (first, second, third):
        assert seq.output_ids == want[tuple(seq.prompt_ids)]

    # two requests arriving together: the second waits for the first's prefill, then shares it
    together = DecodeBatch(model, max_batch=2, max_len=64, paged=True)
    seqs = [Sequence(a, params), Sequence(b, params)]
    together.add(seqs)
    assert together.prefilled_tokens == len(a) + len(b) - shared
    while together.active():
        together.step()
    assert [s.output_ids for s in seqs] == [want[tuple(a)], want[tuple(b)]]

    # switched off: every prompt is prefilled in full, with the same tokens
    off = DecodeBatch(model, max_batch=2, max_len=64, paged=True, prefix_cache=False)
    seqs = [Sequence(a, params), Sequence(b, params)]
    off.add(seqs)
    while off.active():
        off.step()
    assert off.prefilled_tokens == len(a) + len(b)
    assert [s.output_ids for s in seqs] == [want[tuple(a)], want[tuple(b)]]


def test_a_multi_turn_chat_reuses_the_previous_reply():
    model = build_model(tiny(), seed=0).eval()
    params = SamplingParams(max_new_tokens=20)
    batch = DecodeBatch(model, max_batch=1, max_len=128, paged=True)
    turn1 = Sequence(SYSTEM + [1, 2], params)
    batch.add([turn1])
    while batch.active():
        batch.step()
    history = turn1.prompt_ids + turn1.output_ids  # 62 tokens, of which 61 were run through the model
    before = batch.prefilled_tokens
    turn2 = Sequence(history + [4, 5, 6], params)
    batch.add([turn2])
    assert batch.prefilled_tokens - before == len(turn2.prompt_ids) - 48  # three full blocks reused
    while batch.active():
        batch.step()
    assert turn2.output_ids == generate(model, [turn2.prompt_ids], params)[0].output_ids


def test_a_failed_prefill_returns_its_blocks_and_names_none(monkeypatch):
    import importlib

    gen = importlib.import_module("bessemer.infer.generate")  # the module (the package exports a function)
    model = build_model(tiny(), seed=0).eval()
    batch = DecodeBatch(model, max_batch=2, max_len=64, paged=True)
    batch.add([Sequence(list(range(1, 41)), SamplingParams(max_new_tokens=20))])  # row 0 reaches position 60
    while batch.active():
        batch.step()
    cached = batch.blocks.cached

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(gen, "prefill", out_of_memory)
    with pytest.raises(RuntimeError):
        batch.add([Sequence(SYSTEM + [1], SamplingParams(max_new_tokens=4))])
    for row in batch.active():  # what the engine does when a step fails
        batch.release(row)
    # nothing of the failed prompt is named (its keys were never written), all its blocks are back
    assert batch.blocks.cached == cached and batch.blocks.available == batch.blocks.num_blocks
