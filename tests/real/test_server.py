"""`serve` on SmolLM2-135M-Instruct driven by the `openai` client, against transformers' greedy replies.

One in-process server for the module (small limits, so its KV cache is small); the reference is transformers'
model from the same GGUF file, prompted through `apply_chat_template` (tests/real/conftest.py).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from tests.infer.server_helpers import running_server

openai = pytest.importorskip("openai")
pytestmark = pytest.mark.real

QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about rain.",
    "What is 2 + 2?",
]
NEW_TOKENS = 12


@pytest.fixture(scope="module")
def served(smollm2):
    from bessemer.infer.loading import load_for_inference

    loaded = load_for_inference(smollm2.checkpoint, device="cpu")
    with running_server(loaded, max_batch=4, max_tokens=64, max_prompt_tokens=256) as (url, engine):
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
        yield client, loaded.name, engine


@pytest.fixture(scope="module")
def greedy(reference_greedy) -> dict[str, tuple[list[int], list[int], str]]:
    """question -> (prompt ids, reply ids, reply text), transformers' greedy, stopping at its eos."""
    return {q: reference_greedy(q, NEW_TOKENS) for q in QUESTIONS}


def ask(client, model: str, q: str, **kw):
    kw = {"max_tokens": NEW_TOKENS, "temperature": 0, **kw}
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": q}], **kw)


def streamed(client, model: str, q: str, **kw) -> tuple[list[str], list]:
    chunks = list(ask(client, model, q, stream=True, **kw))
    return [c.choices[0].delta.content or "" for c in chunks if c.choices], chunks


def test_chat_replies_usage_and_finish_equal_transformers(served, greedy, reference_tokenizer):
    client, model, _ = served
    finishes = set()
    for q in QUESTIONS[:2]:
        prompt, new, text = greedy[q]
        finish = "stop" if new[-1] == reference_tokenizer.eos_token_id else "length"
        finishes.add(finish)
        r = ask(client, model, q)
        assert r.choices[0].message.content == text and r.choices[0].finish_reason == finish
        assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(prompt), len(new))
        deltas, chunks = streamed(client, model, q, stream_options={"include_usage": True})
        assert "".join(deltas) == text and chunks[-1].usage == r.usage
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == finish
    assert finishes == {"stop", "length"}  # the first reply ends itself, the haiku runs out of tokens


def test_a_stop_string_across_tokens_never_leaks_into_the_stream(served, greedy, reference_tokenizer):
    client, model, _ = served
    _, new, text = greedy[QUESTIONS[0]]
    # a boundary between two reply tokens near the middle; the stop string takes 2 characters either side
    pieces = [reference_tokenizer.decode(new[:i], skip_special_tokens=True) for i in range(1, len(new))]
    cut = len(pieces[len(pieces) // 2])
    stop = text[cut - 2 : cut + 2]
    assert text.find(stop) == cut - 2
    for chat_stream in (False, True):
        if chat_stream:
            deltas, chunks = streamed(client, model, QUESTIONS[0], stop=[stop, "never seen"])
            got, finish = "".join(deltas), [c.choices[0].finish_reason for c in chunks if c.choices][-1]
        else:
            r = ask(client, model, QUESTIONS[0], stop=stop)
            got, finish = r.choices[0].message.content, r.choices[0].finish_reason
        assert (got, finish) == (text[: cut - 2], "stop")


def test_concurrent_streams_answer_as_alone(served, greedy):
    client, model, engine = served
    with ThreadPoolExecutor(len(QUESTIONS)) as pool:
        got = list(pool.map(lambda q: "".join(streamed(client, model, q)[0]), QUESTIONS))
    assert got == [greedy[q][2] for q in QUESTIONS]
    stats = engine.stats()
    assert stats["active"] == 0 and stats["free_rows"] == stats["max_batch"]


def test_seeded_choices_repeat_and_limits_are_named(served):
    client, model, _ = served
    kw = dict(n=2, seed=7, temperature=0.9, max_tokens=8)
    first = [c.message.content for c in ask(client, model, QUESTIONS[1], **kw).choices]
    assert [c.message.content for c in ask(client, model, QUESTIONS[1], **kw).choices] == first
    with pytest.raises(openai.BadRequestError) as too_long:
        ask(client, model, "word " * 300)
    assert (
        too_long.value.body["param"] == "messages"
        and too_long.value.body["code"] == "context_length_exceeded"
    )
    for key in ("max_tokens", "max_completion_tokens"):
        with pytest.raises(openai.BadRequestError) as above:
            client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "hi"}], **{key: 65}
            )
        assert above.value.body["param"] == key and "limit of 64" in above.value.body["message"]


def test_logprobs_equal_transformers_log_softmax(served, greedy, reference_model, reference_tokenizer):
    client, model, _ = served
    prompt, new, text = greedy[QUESTIONS[0]]
    with torch.no_grad():
        logits = reference_model(torch.tensor([prompt + new])).logits[0, len(prompt) - 1 : -1]
    want = torch.log_softmax(logits.float(), -1)
    got = ask(client, model, QUESTIONS[0], logprobs=True, top_logprobs=3).choices[0].logprobs.content
    assert new[-1] == reference_tokenizer.eos_token_id and len(got) == len(new) - 1  # <|im_end|> is not text
    assert "".join(e.token for e in got) == text
    for k, entry in enumerate(got):
        top = want[k].topk(3)
        # float32 on both sides from the same weights: logits agree to 5e-4 (test_smollm2), so these to 1e-3
        assert entry.logprob == pytest.approx(want[k, new[k]].item(), abs=1e-3)
        assert [t.logprob for t in entry.top_logprobs] == pytest.approx(top.values.tolist(), abs=1e-3)
        assert entry.top_logprobs[0].token == entry.token
