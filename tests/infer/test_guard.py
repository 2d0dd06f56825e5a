"""The server's front door: cross-site use refused, hostile bodies and headers answered with a 4xx, never a 500."""

from __future__ import annotations

import json
import socket

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bessemer.cli.main import main
from bessemer.config.schema import ServeSection
from bessemer.errors import ConfigError
from bessemer.infer.server import check_settings
from tests.infer.server_helpers import running_server

KEY = "sk-guard-test"
AUTH = {"Authorization": f"Bearer {KEY}"}
ROUTES = ("/v1/completions", "/v1/chat/completions")


@pytest.fixture(scope="module")
def server(loaded):
    with running_server(loaded, api_key=KEY, max_tokens=2, max_prompt_tokens=64, max_body_bytes=1 << 18) as (
        url,
        _engine,
    ):
        yield url


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server, timeout=60) as client:
        yield client


def error_of(resp: httpx.Response) -> dict:
    body = resp.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def test_json_content_type_is_required(http):
    body = json.dumps({"prompt": "hi"})
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        r = http.post("/v1/completions", content=body, headers={**AUTH, "Content-Type": ctype})
        assert r.status_code == 415 and error_of(r)["code"] == "unsupported_media_type"
    ok = http.post(
        "/v1/completions", content=body, headers={**AUTH, "Content-Type": "application/json; charset=utf-8"}
    )
    assert ok.status_code == 200


def test_host_header_must_name_this_server(http, server):
    port = server.rsplit(":", 1)[1]
    evil = http.get("/v1/models", headers={**AUTH, "Host": f"attacker.example:{port}"})
    assert evil.status_code == 400 and error_of(evil)["code"] == "invalid_host"
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", "LOCALHOST"):
        assert http.get("/v1/models", headers={**AUTH, "Host": host}).status_code == 200


def test_cross_origin_requests_are_refused_unless_opted_in(http, server, loaded):
    evil = http.post(
        "/v1/completions", json={"prompt": "hi"}, headers={**AUTH, "Origin": "https://evil.example"}
    )
    assert evil.status_code == 403 and error_of(evil)["code"] == "origin_not_allowed"
    assert "access-control-allow-origin" not in evil.headers
    pre = http.options(
        "/v1/completions", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert pre.status_code == 403 and "access-control-allow-origin" not in pre.headers
    same = http.post("/v1/completions", json={"prompt": "hi"}, headers={**AUTH, "Origin": server})
    assert same.status_code == 200
    app_origin = "http://app.example:3000"
    with running_server(loaded, cors_origins=[app_origin], max_tokens=2) as (url, _):
        pre = httpx.options(
            url + "/v1/completions",
            headers={
                "Origin": app_origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type",
            },
        )
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == app_origin
        r = httpx.post(
            url + "/v1/completions", json={"prompt": "hi"}, headers={"Origin": app_origin}, timeout=60
        )
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == app_origin
        other = httpx.post(
            url + "/v1/completions", json={"prompt": "hi"}, headers={"Origin": "http://x.example"}
        )
        assert other.status_code == 403


def raw_request(url: str, request: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


def test_non_ascii_authorization_is_a_401(http, server):
    for value in (
        "Bearer ключ-ключ".encode(),
        b"Bearer \xff\xfe\x80",
        "Bearer sk-guard-tést".encode("latin-1"),
    ):
        r = http.get("/v1/models", headers={"Authorization": value})
        assert r.status_code == 401 and error_of(r)["code"] == "invalid_api_key"
    port = server.rsplit(":", 1)[1]
    raw = raw_request(
        server,
        b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1:"
        + port.encode()
        + b"\r\nAuthorization: Bearer \xc3\xa9\xe2\x82\xac\r\n"
        b"Connection: close\r\n\r\n",
    )
    assert raw.startswith(b"HTTP/1.1 401")


@pytest.mark.parametrize("key", ["short", "ключ-ключ-ключ", "has space in it", "tab\tinside-key", "x" * 300])
def test_bad_api_key_is_refused_at_start(key):
    with pytest.raises(ConfigError, match="--api-key"):
        check_settings(ServeSection(api_key=key))


def test_serve_cli_refuses_a_bad_key_in_one_line(capsys, tiny_ckpt):
    assert main(["serve", "--checkpoint", str(tiny_ckpt), "--api-key", "clé secrète"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--api-key" in err[0]


def test_deep_nesting_and_lone_surrogates_are_400(http):
    headers = {**AUTH, "Content-Type": "application/json"}
    for depth in (40, 50_000):
        body = '{"prompt": ' + "[" * depth + "]" * depth + "}"
        r = http.post("/v1/completions", content=body, headers=headers)
        assert r.status_code == 400 and "nests deeper" in error_of(r)["message"]
    r = http.post("/v1/completions", content='{"prompt": "abc \\ud800 def"}', headers=headers)
    assert r.status_code == 400 and error_of(r)["param"] == "prompt" and "surrogate" in error_of(r)["message"]
    chat = '{"messages": [{"role": "user", "content": "\\udfff"}]}'
    r = http.post("/v1/chat/completions", content=chat, headers=headers)
    assert r.status_code == 400 and error_of(r)["param"].startswith("messages")
    key = '{"prompt": "hi", "\\ud800": 1}'
    assert http.post("/v1/completions", content=key, headers=headers).status_code == 400


def test_bodies_json_cannot_read_are_400_and_a_slow_body_is_408(http, server, monkeypatch):
    headers = {**AUTH, "Content-Type": "application/json"}
    huge_int = b'{"prompt": "hi", "max_tokens": 1' + b"0" * 5000 + b"}"  # past Python's int-from-text limit
    r = http.post("/v1/completions", content=huge_int, headers=headers)
    assert r.status_code == 400 and "not valid JSON" in error_of(r)["message"]
    r = http.post("/v1/completions", content='{"prompt": "hi"}'.encode("utf-16"), headers=headers)
    assert r.status_code == 400 and "not UTF-8" in error_of(r)["message"]
    bom = http.post("/v1/completions", content=b'\xef\xbb\xbf{"prompt": "hi"}', headers=headers)
    assert bom.status_code == 200
    # headers promise 100 bytes, 10 come: answered 408 when the body deadline passes, and the socket closed
    monkeypatch.setattr("bessemer.infer.guard.BODY_TIMEOUT_S", 0.5)
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        head = f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {KEY}\r\n"
        sock.sendall(f"{head}Content-Type: application/json\r\nContent-Length: 100\r\n\r\n".encode())
        sock.sendall(b'{"prompt":')
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 408") and b"body_timeout" in reply


def test_validation_errors_name_the_field(http):
    cases = {
        "temperature": {"prompt": "hi", "temperature": 3},
        "top_p": {"prompt": "hi", "top_p": "0.5"},
        "max_tokens": {"prompt": "hi", "max_tokens": 1.5},
        "stream": {"prompt": "hi", "stream": "yes"},
        "stop": {"prompt": "hi", "stop": ["x"] * 17},
        "prompt": {"prompt": {"text": "hi"}},
        "logprobs": {"prompt": "hi", "logprobs": 21},
        "stream_options": {"prompt": "hi", "stream_options": {"include_usage": True}},
    }
    for param, body in cases.items():
        r = http.post("/v1/completions", json=body, headers=AUTH)
        assert r.status_code == 400, (param, r.text)
        assert error_of(r)["param"] == param and param in error_of(r)["message"]
    nan = http.post(
        "/v1/completions",
        content='{"prompt": "hi", "temperature": NaN}',
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert nan.status_code == 400 and error_of(nan)["param"] == "temperature"


def test_openapi_schema_declares_the_bodies(http):
    schema = http.get("/openapi.json").json()
    comps = schema["components"]["schemas"]
    temp = comps["CompletionRequest"]["properties"]["temperature"]
    assert temp["maximum"] == 2 and temp["minimum"] == 0 and temp["default"] == 1
    assert "messages" in comps["ChatCompletionRequest"]["required"]
    post = schema["paths"]["/v1/chat/completions"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "ChatCompletionRequest"
    )
    assert post["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "ChatCompletionResponse"
    )


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.text(st.characters(categories=["Cs"]), min_size=1, max_size=2),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
FIELDS = st.sampled_from(
    [
        "prompt",
        "messages",
        "max_tokens",
        "temperature",
        "top_p",
        "top_k",
        "stop",
        "seed",
        "stream",
        "n",
        "stream_options",
        "repetition_penalty",
        "max_completion_tokens",
        "logit_bias",
        "echo",
        "ignore_eos",
    ]
)
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "bot"]), "content": JSON}
)
BODY = (
    JSON
    | st.dictionaries(FIELDS, JSON, max_size=5)
    | st.fixed_dictionaries(
        {"prompt": st.text(max_size=30) | st.lists(st.integers(-5, 40000), max_size=5)},
        optional={"max_tokens": JSON, "stop": JSON, "temperature": JSON, "stream": st.booleans()},
    )
    | st.fixed_dictionaries(
        {"messages": st.lists(MESSAGE, max_size=3)},
        optional={"max_tokens": JSON, "seed": JSON, "stream": st.booleans()},
    )
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=BODY, route=st.sampled_from(ROUTES))
def test_any_json_body_gets_a_4xx_or_an_answer(http, body, route):
    content = json.dumps(body)  # ensure_ascii: lone surrogates travel as \\udxxx escapes
    r = http.post(route, content=content, headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code in (200, 400, 413), (r.status_code, r.text)
    if r.status_code != 200:
        error_of(r)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=200), route=st.sampled_from(ROUTES))
def test_any_bytes_body_gets_a_4xx(http, body, route):
    r = http.post(route, content=body, headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code < 500, (r.status_code, r.text)
