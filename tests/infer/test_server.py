"""The OpenAI-compatible server driven by the official `openai` client and raw HTTP."""

from __future__ import annotations

import json
import signal
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from bessemer.infer.generate import generate
from bessemer.infer.request import stop_token_ids
from bessemer.infer.sampling import SamplingParams
from tests.infer.server_helpers import BackgroundServer, running_server, wait_for

openai = pytest.importorskip("openai")

KEY = "sk-test-key"
PROMPT = "The old lighthouse keeper said"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server(loaded):
    with running_server(
        loaded,
        api_key=KEY,
        max_batch=8,
        max_queue=64,
        max_tokens=256,
        max_prompt_tokens=256,
        max_body_bytes=16384,
    ) as (url, engine):
        yield url, engine


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key=KEY, max_retries=0, timeout=60)


def reference(loaded, ids: list[int], n: int, stops: list[str] = ()):
    params = SamplingParams(
        max_new_tokens=n, stop=list(stops), stop_token_ids=stop_token_ids(loaded.tokenizer, stops)
    )
    return generate(loaded.model, [ids], params, loaded.tokenizer)[0]


def test_models_and_health(client, server, loaded):
    assert [m.id for m in client.models.list().data] == [loaded.name]
    health = httpx.get(server[0] + "/health").json()
    assert health["status"] == "ok" and health["max_batch"] == 8


def test_completion_greedy_equals_generate(client, loaded):
    want = reference(loaded, loaded.tokenizer.encode(PROMPT), 20)
    r = client.completions.create(model=loaded.name, prompt=PROMPT, max_tokens=20, temperature=0)
    assert r.choices[0].text == want.text
    assert r.choices[0].finish_reason == want.finish_reason == "length"
    assert r.usage.completion_tokens == len(want.output_ids) == 20
    assert r.usage.prompt_tokens == len(want.prompt_ids)
    # prompts may also be token ids
    r2 = client.completions.create(model=loaded.name, prompt=want.prompt_ids, max_tokens=20, temperature=0)
    assert r2.choices[0].text == want.text


def test_completion_stream_equals_non_stream(client, loaded):
    full = client.completions.create(model=loaded.name, prompt=PROMPT, max_tokens=24, temperature=0)
    chunks = list(
        client.completions.create(
            model=loaded.name,
            prompt=PROMPT,
            max_tokens=24,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == full.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 24
    assert all(c.usage is None for c in chunks[:-1]) and "usage" in chunks[0].model_dump(exclude_unset=True)


def test_chat_greedy_equals_template_generate(client, loaded):
    from bessemer.templates import encode_prompt, stop_strings

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]
    ids = encode_prompt(loaded.tokenizer, loaded.template, messages)
    want = reference(loaded, ids, 16, stop_strings(loaded.template, loaded.tokenizer))
    r = client.chat.completions.create(model=loaded.name, messages=messages, max_tokens=16, temperature=0)
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == want.text
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == len(want.output_ids)
    stream = client.chat.completions.create(
        model=loaded.name, messages=messages, max_tokens=16, temperature=0, stream=True
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == want.text
    assert chunks[-1].choices[0].finish_reason == r.choices[0].finish_reason


def test_stop_string_cuts_the_text(client, loaded):
    full = (
        client.completions.create(model=loaded.name, prompt=PROMPT, max_tokens=24, temperature=0)
        .choices[0]
        .text
    )
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    r = client.completions.create(model=loaded.name, prompt=PROMPT, max_tokens=24, temperature=0, stop=[stop])
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].text == full[: full.index(stop)]


def test_seeded_sampling_repeats_through_the_server(client, loaded):
    kw = dict(model=loaded.name, prompt=PROMPT, max_tokens=12, temperature=1.0, top_p=0.9, seed=11)
    a = client.completions.create(**kw).choices[0].text
    assert client.completions.create(**kw).choices[0].text == a
    assert client.completions.create(**{**kw, "seed": 12}).choices[0].text != a


def first_event(lines) -> str:
    """The first SSE data line; `lines` stays open (dropping the iterator would close the connection)."""
    for line in lines:
        if line.startswith("data: "):
            return line
    raise AssertionError("stream ended without data")


def error_of(resp: httpx.Response) -> dict:
    body = resp.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_api_key_is_required(server, loaded):
    url = server[0]
    assert httpx.get(url + "/v1/models").status_code == 401
    bad = httpx.get(url + "/v1/models", headers={"Authorization": "Bearer wrong"})
    assert bad.status_code == 401 and error_of(bad)["code"] == "invalid_api_key"
    no_key = openai.OpenAI(base_url=url + "/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        no_key.completions.create(model=loaded.name, prompt="hi", max_tokens=2)


def test_bad_requests_get_openai_errors(server):
    url = server[0] + "/v1/completions"
    headers = {**AUTH, "Content-Type": "application/json"}
    bad_json = httpx.post(url, content=b'{"prompt": "hi", ', headers=headers)
    assert bad_json.status_code == 400 and "not valid JSON" in error_of(bad_json)["message"]
    big = httpx.post(url, content=json.dumps({"prompt": "x" * 20000}).encode(), headers=headers)
    assert big.status_code == 413 and error_of(big)["code"] == "body_too_large"
    too_many = httpx.post(url, json={"prompt": "hi", "max_tokens": 257}, headers=AUTH)
    assert too_many.status_code == 400 and error_of(too_many)["param"] == "max_tokens"
    long_prompt = httpx.post(url, json={"prompt": "word " * 400, "max_tokens": 4}, headers=AUTH)
    assert long_prompt.status_code == 400 and error_of(long_prompt)["code"] == "context_length_exceeded"
    assert httpx.post(url, json={"prompt": "hi", "n": 17}, headers=AUTH).status_code == 400
    assert httpx.post(url, json={"prompt": "hi", "temperature": "hot"}, headers=AUTH).status_code == 400
    assert httpx.post(url, json={"prompt": ""}, headers=AUTH).status_code == 400
    chat = httpx.post(server[0] + "/v1/chat/completions", json={"messages": [{"role": "bot"}]}, headers=AUTH)
    assert chat.status_code == 400 and error_of(chat)["param"] == "messages"


def test_client_disconnect_mid_stream_frees_the_row(server):
    url, engine = server
    before = engine.stats()["cancelled"]
    body = {"prompt": PROMPT, "max_tokens": 256, "temperature": 0, "stream": True, "ignore_eos": True}
    with (
        httpx.Client(timeout=30) as http,
        http.stream("POST", url + "/v1/completions", json=body, headers=AUTH) as r,
    ):
        assert r.status_code == 200
        lines = r.iter_lines()
        assert first_event(lines)
        assert engine.stats()["active"] == 1
    wait_for(lambda: engine.stats()["active"] == 0, what="the row to be freed")
    stats = engine.stats()
    assert stats["cancelled"] == before + 1 and stats["free_rows"] == stats["max_batch"]


def test_concurrent_load_shares_the_batch_without_leaks(client, server, loaded):
    url, engine = server
    prompts = [f"Story number {i}:" for i in range(4)]
    want = {p: reference(loaded, loaded.tokenizer.encode(p), 12).text for p in prompts}
    steps_before = engine.stats()["steps"]

    def one(i: int) -> str:
        p = prompts[i % 4]
        kw = dict(model=loaded.name, prompt=p, max_tokens=12, temperature=0)
        if i % 2:
            text = "".join(
                c.choices[0].text for c in client.completions.create(**kw, stream=True) if c.choices
            )
        else:
            text = client.completions.create(**kw).choices[0].text
        assert text == want[p], f"request {i}: batching changed the greedy output"
        return text

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(32)))
    assert len(results) == 32
    stats = engine.stats()
    assert stats["active"] == 0 and stats["queued"] == 0 and stats["free_rows"] == stats["max_batch"]
    # 32 requests x 12 tokens in far fewer steps than one at a time: they were decoded together
    assert stats["steps"] - steps_before < 32 * 12 // 2


@pytest.mark.parametrize("scarce", ["rows", "kv_blocks"])
def test_a_request_waits_for_what_is_scarce_and_a_full_queue_answers_429(loaded, scarce):
    # rows: one row, held by the long request; kv_blocks: rows to spare, but the long request holds every block
    if scarce == "rows":
        long_tokens, blocks = 1000, None
        settings = dict(max_batch=1)
    else:
        long_tokens = 900
        blocks = -(-(len(loaded.tokenizer.encode(PROMPT)) + long_tokens) // 16)  # all of the pool
        settings = dict(max_batch=4, kv_blocks=blocks)
    with running_server(loaded, max_queue=1, max_tokens=long_tokens, max_prompt_tokens=24, **settings) as (
        url,
        engine,
    ):
        long = {
            "prompt": PROMPT,
            "max_tokens": long_tokens,
            "temperature": 0,
            "stream": True,
            "ignore_eos": True,
        }
        short = {"prompt": PROMPT, "max_tokens": 3, "temperature": 0}
        with httpx.Client(timeout=60) as http:
            whole_pool = http.post(url + "/v1/completions", json={**long, "max_tokens": 20, "stream": False})
            with http.stream("POST", url + "/v1/completions", json=long) as first:
                lines = first.iter_lines()
                first_event(lines)
                queued = {}
                waiter = threading.Thread(
                    target=lambda: queued.update(
                        r=httpx.post(url + "/v1/completions", json=short, timeout=60)
                    )
                )
                waiter.start()
                wait_for(lambda: engine.stats()["queued"] == 1, what="the second request to wait")
                if scarce == "kv_blocks":
                    assert engine.stats()["free_rows"] == 3 and engine.stats()["kv_blocks_available"] == 0
                third = http.post(url + "/v1/completions", json=short)
                assert third.status_code == 429 and error_of(third)["type"] == "rate_limit_error"
            waiter.join(timeout=60)  # the first stream closed: its row or blocks went to the waiting request
            assert queued["r"].status_code == 200
            assert queued["r"].json()["usage"]["completion_tokens"] == 3
        assert whole_pool.status_code == 200
        wait_for(lambda: engine.stats()["active"] == 0, what="rows to empty")
        if blocks is not None:
            assert engine.stats()["kv_blocks_available"] == blocks


def test_requests_sharing_a_system_prompt_reuse_its_blocks(loaded):
    system = "You are a careful assistant who answers briefly. " * 4
    with running_server(loaded, max_batch=2) as (url, engine):
        http_client = openai.OpenAI(base_url=url + "/v1", api_key="unused")
        answers = []
        for question in ("What is a lighthouse?", "Who keeps it?"):
            messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
            reply = http_client.chat.completions.create(
                model=loaded.name, messages=messages, max_tokens=8, temperature=0
            )
            answers.append((messages, reply.choices[0].message.content))
        stats = engine.stats()
        assert (
            stats["prefix_hit_tokens"] >= 32
            and stats["prefilled_tokens"] < 2 * len(loaded.tokenizer.encode(system)) + 60
        )
    # the same answers as a server that caches nothing
    with running_server(loaded, max_batch=2, prefix_cache=False) as (url, engine):
        http_client = openai.OpenAI(base_url=url + "/v1", api_key="unused")
        for messages, text in answers:
            reply = http_client.chat.completions.create(
                model=loaded.name, messages=messages, max_tokens=8, temperature=0
            )
            assert reply.choices[0].message.content == text
        assert engine.stats()["prefix_hit_tokens"] == 0


def refusal(url: str, body: dict, status: int = 400) -> dict:
    r = httpx.post(url, json=body, headers=AUTH, timeout=60)
    assert r.status_code == status, r.text
    return error_of(r)


@pytest.mark.parametrize(
    ("path", "body", "param", "says"),
    [
        (
            "chat",
            {"messages": [{"role": "user", "content": 5}]},
            "messages",
            "messages[0].content: give a string",
        ),
        (
            "chat",
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            "messages",
            "type 'image_url'; this model reads only 'text' parts",
        ),
        ("chat", {"messages": [{"role": "tool", "content": "x"}]}, "messages", "messages[0].role"),
        ("chat", {"messages": []}, "messages", "at least 1 item"),
        (
            "chat",
            {"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2},
            "top_logprobs",
            "set logprobs: true",
        ),
        (
            "chat",
            {"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}},
            "response_format",
            "only {'type': 'text'}",
        ),
        (
            "chat",
            {"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]},
            "tools",
            "no tool calls",
        ),
        (
            "chat",
            {"messages": [{"role": "user", "content": "x"}], "presence_penalty": 0.5},
            "presence_penalty",
            "",
        ),
        ("chat", {"messages": [{"role": "user", "content": "x"}], "logit_bias": {"5": 1}}, "logit_bias", ""),
        ("completions", {"prompt": None}, "prompt", "give a string, a list of token ids"),
        ("completions", {"prompt": ["a"] * 17}, "prompt", "the limit is 16"),
        ("completions", {"prompt": ["a", "b"], "n": 9}, "n", "asks for 18 choices"),
        ("completions", {"prompt": ["a", ""]}, "prompt", "prompt[1]: prompt is empty"),
        ("completions", {"prompt": "a", "stop": ["x"] * 17}, "stop", "17 stop strings"),
        ("completions", {"prompt": "a", "stop": [1]}, "stop", "a list of strings"),
        ("completions", {"prompt": "a", "stop": "x" * 513}, "stop", "513 characters; the limit is 512"),
        ("completions", {"prompt": "a", "stream_options": {}}, "stream_options", "only allowed with stream"),
        ("completions", {"prompt": "a", "logprobs": 21}, "logprobs", "less than or equal to 20"),
        ("completions", {"prompt": "a", "echo": True}, "echo", "not supported"),
        ("completions", {"prompt": "a", "best_of": 2}, "best_of", "use n"),
    ],
)
def test_unsupported_or_malformed_fields_get_a_400_naming_them(server, path, body, param, says):
    err = refusal(f"{server[0]}/v1/{'chat/completions' if path == 'chat' else 'completions'}", body)
    assert err["param"] == param and says in err["message"], err


def test_unknown_model_is_404_and_neutral_fields_are_accepted(client, server, loaded):
    with pytest.raises(openai.NotFoundError, match="model 'gpt-4o' is not served here"):
        client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
    assert client.models.retrieve(loaded.name).id == loaded.name
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")
    missing = httpx.get(server[0] + "/v1/nothing", headers=AUTH)
    assert missing.status_code == 404 and "GET /v1/nothing" in error_of(missing)["message"]
    # what clients send by default, and text parts, are the plain request
    plain = [{"role": "user", "content": "Name a colour."}]
    parts = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "Name a "}, {"type": "text", "text": "colour."}],
        }
    ]
    want = client.chat.completions.create(model=loaded.name, messages=plain, max_tokens=6, temperature=0)
    got = client.chat.completions.create(
        model=loaded.name,
        messages=parts,
        max_tokens=6,
        temperature=0,
        response_format={"type": "text"},
        tools=[],
        tool_choice="none",
        logprobs=False,
    )
    assert got.choices[0].message.content == want.choices[0].message.content


def test_n_choices_and_prompt_batches(client, loaded):
    prompts = ["Story number 1:", "Story number 2:"]
    want = [reference(loaded, loaded.tokenizer.encode(p), 8).text for p in prompts]
    r = client.completions.create(model=loaded.name, prompt=prompts, n=2, max_tokens=8, temperature=0)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert [c.text for c in r.choices] == [want[0], want[0], want[1], want[1]]
    assert r.usage.prompt_tokens == sum(len(loaded.tokenizer.encode(p)) for p in prompts)
    assert r.usage.completion_tokens == 4 * 8
    chunks = list(
        client.completions.create(
            model=loaded.name,
            prompt=prompts,
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    texts = ["", ""]
    for c in chunks:
        for choice in c.choices:
            texts[choice.index] += choice.text
    assert texts == want and chunks[-1].usage.completion_tokens == 16
    # sampled choices: each its own draw, the set repeated by the same seed; choice 0 is the n=1 draw
    kw = dict(model=loaded.name, prompt=PROMPT, max_tokens=12, temperature=1.0, seed=5)
    three = [c.text for c in client.completions.create(**kw, n=3).choices]
    assert len(set(three)) == 3
    assert [c.text for c in client.completions.create(**kw, n=3).choices] == three
    assert client.completions.create(**kw).choices[0].text == three[0]
    messages = [{"role": "user", "content": "Name a colour."}]
    chat = client.chat.completions.create(
        model=loaded.name, messages=messages, n=2, max_tokens=6, temperature=0
    )
    assert len(chat.choices) == 2 and chat.choices[0].message.content == chat.choices[1].message.content


def test_a_client_gone_before_its_plain_answer_frees_the_row_and_shutdown_ends_streams(loaded):
    from starlette.testclient import TestClient

    from bessemer.config.schema import ServeSection
    from bessemer.infer.server import build_app, build_engine

    cfg = ServeSection(max_tokens=1000, max_prompt_tokens=64)
    engine = build_engine(loaded, cfg)
    app = build_app(loaded, engine, cfg)
    threads = threading.active_count()
    server = BackgroundServer(app, cfg)
    body = {"prompt": PROMPT, "max_tokens": 1000, "stream": True, "ignore_eos": True}
    with server:
        # a plain (not streamed) request whose client gives up is cancelled, not run to max_tokens
        plain = json.dumps({**body, "stream": False}).encode()
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            head = "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            sock.sendall(f"{head}Content-Length: {len(plain)}\r\n\r\n".encode() + plain)
            wait_for(lambda: engine.stats()["active"] == 1, what="the request to start")
        wait_for(lambda: engine.stats()["active"] == 0, what="the row to be freed")
        assert engine.stats()["cancelled"] == 1 and engine.stats()["generated_tokens"] < 1000
        # SIGTERM / SIGINT with a stream in flight: the stream ends at once, with an error event and [DONE]
        with (
            httpx.Client(timeout=30) as http,
            http.stream("POST", server.url + "/v1/completions", json=body) as r,
        ):
            lines = r.iter_lines()
            first_event(lines)
            server._server.handle_exit(signal.SIGTERM, None)  # what uvicorn calls on the signal
            rest = [line for line in lines if line]
            assert rest[-1] == "data: [DONE]"
            assert json.loads(rest[-2][len("data: ") :])["error"]["code"] == "shutting_down"
        wait_for(lambda: not server._thread.is_alive(), what="the server to exit")
    assert engine.stats()["failed"] == 1
    late = TestClient(app, base_url="http://127.0.0.1").post(
        "/v1/completions", json={"prompt": "hi", "max_tokens": 2}
    )
    assert late.status_code == 503 and late.json()["error"]["code"] == "shutting_down"
    wait_for(lambda: threading.active_count() <= threads, what="the server's threads to end")


def test_logprobs_follow_the_text_in_both_shapes(client, loaded):
    kw = dict(model=loaded.name, prompt=PROMPT, max_tokens=8, temperature=0)
    plain = client.completions.create(**kw).choices[0].text
    got = client.completions.create(**kw, logprobs=3).choices[0]
    assert got.text == plain and "".join(got.logprobs.tokens) == plain
    assert got.logprobs.text_offset == [sum(map(len, got.logprobs.tokens[:i])) for i in range(8)]
    for lp, top in zip(got.logprobs.token_logprobs, got.logprobs.top_logprobs, strict=True):
        assert len(top) == 3 and max(top.values()) == pytest.approx(lp) and lp <= 0  # greedy took the top one
    chunks = client.completions.create(**kw, logprobs=0, stream=True)
    assert [
        t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.tokens
    ] == (got.logprobs.tokens)
    messages = [{"role": "user", "content": "Name a colour."}]
    chat = client.chat.completions.create(
        model=loaded.name, messages=messages, max_tokens=8, temperature=0, logprobs=True, top_logprobs=2
    ).choices[0]
    content = chat.logprobs.content
    assert "".join(e.token for e in content) == chat.message.content  # a stop token is not part of it
    assert all(len(e.top_logprobs) == 2 and bytes(e.bytes).decode() == e.token for e in content)
