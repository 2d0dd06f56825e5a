"""The continuous-batching engine: requests from many threads get the tokens they would get alone."""

from __future__ import annotations

import threading

import pytest

from bessemer.infer.engine import Engine, QueueFull
from bessemer.infer.generate import Sequence, generate
from bessemer.infer.sampling import SamplingParams
from bessemer.models import build_model
from tests.infer.server_helpers import wait_for
from tests.infer.test_generate import tiny


@pytest.fixture
def model():
    return build_model(tiny(n_kv_heads=2, sliding_window=8), seed=0).eval()


def run_all(engine: Engine, seqs: list[Sequence]) -> list[list[str]]:
    events = [[] for _ in seqs]
    done = [threading.Event() for _ in seqs]

    def submit(i):
        def on_event(kind, value, i=i):
            events[i].append((kind, value))
            if kind != "text":
                done[i].set()

        engine.submit(seqs[i], on_event)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(len(seqs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for d in done:
        assert d.wait(60)
    return events


def test_concurrent_requests_equal_their_solo_runs(model):
    prompts = [[(7 * i + j) % 250 + 1 for j in range(3 + i % 5)] for i in range(12)]
    params = [
        SamplingParams(max_new_tokens=6 + i % 7, temperature=0.0 if i % 3 else 0.9, top_k=20, seed=i)
        for i in range(12)
    ]
    solo = [generate(model, [p], sp)[0].output_ids for p, sp in zip(prompts, params)]
    engine = Engine(model, max_batch=4, max_len=64, max_queue=16)
    engine.start()
    try:
        seqs = [Sequence(p, sp) for p, sp in zip(prompts, params)]
        events = run_all(engine, seqs)
        assert [s.output_ids for s in seqs] == solo
        assert all(ev[-1] == ("done", "length") for ev in events)
        stats = engine.stats()
        assert stats["active"] == 0 and stats["free_rows"] == 4 and stats["completed"] == 12
    finally:
        engine.stop()


def test_queue_bound_and_cancel(model):
    engine = Engine(model, max_batch=1, max_len=64, max_queue=1)
    long = Sequence([1, 2, 3], SamplingParams(max_new_tokens=60))
    waiting = Sequence([4, 5], SamplingParams(max_new_tokens=2))
    # not started: both stay queued, so the bound is exact
    first = engine.submit(long, lambda *_: None)
    with pytest.raises(QueueFull):
        engine.submit(waiting, lambda *_: None)
    engine.cancel(first)
    engine.start()
    try:
        wait_for(lambda: engine.stats()["cancelled"] == 1, what="the cancelled request to drop")
        got = []
        engine.submit(waiting, lambda kind, value: got.append(kind))
        wait_for(lambda: "done" in got, what="the next request to finish")
        assert engine.stats()["free_rows"] == 1 and long.output_ids == []
    finally:
        engine.stop()


def test_a_request_larger_than_the_block_pool_is_refused_at_once(model):
    engine = Engine(model, max_batch=2, max_len=64, max_queue=4, kv_blocks=2)
    with pytest.raises(ValueError, match="--kv-blocks"):
        engine.submit(Sequence([1, 2, 3], SamplingParams(max_new_tokens=40)), lambda *_: None)
    with pytest.raises(ValueError, match="context of 64"):
        engine.submit(Sequence([1, 2, 3], SamplingParams(max_new_tokens=62)), lambda *_: None)


def test_requests_wait_for_blocks_and_still_equal_their_solo_runs(model):
    # two blocks: one request of up to 32 positions at a time, though there are rows for four
    prompts = [[(5 * i + j) % 250 + 1 for j in range(4 + i)] for i in range(5)]
    params = SamplingParams(max_new_tokens=20)
    solo = [generate(model, [p], params)[0].output_ids for p in prompts]
    engine = Engine(model, max_batch=4, max_len=64, max_queue=8, kv_blocks=2)
    engine.start()
    try:
        seqs = [Sequence(p, params) for p in prompts]
        run_all(engine, seqs)
        assert [s.output_ids for s in seqs] == solo
        assert engine.stats()["kv_blocks_available"] == 2
    finally:
        engine.stop()


def test_int8_weights_through_the_paged_prefix_cache(model):
    import copy

    from bessemer.infer.quantize import quantize_int8

    qmodel = quantize_int8(copy.deepcopy(model))
    system = [(3 * j) % 250 + 1 for j in range(36)]
    prompts = [system + [i + 1, i + 2] for i in range(3)]
    params = SamplingParams(max_new_tokens=8)
    solo = [generate(qmodel, [p], params)[0].output_ids for p in prompts]
    engine = Engine(qmodel, max_batch=2, max_len=64, max_queue=4)
    engine.start()
    try:
        seqs = [Sequence(p, params) for p in prompts]
        run_all(engine, seqs)
        assert [s.output_ids for s in seqs] == solo
        assert engine.stats()["prefix_hit_tokens"] >= 32
    finally:
        engine.stop()
