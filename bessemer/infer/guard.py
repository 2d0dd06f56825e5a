"""The server's front door, as plain ASGI: what a request must be before any route sees it.

In order: the Host header names this server (DNS rebinding), a browser's Origin is this page or an opted-in
one (other web sites cannot drive the server), the API key matches (compared as bytes, so any header value
is a 401 and never a crash), a POST says it is JSON (a cross-site form or text/plain POST cannot), and its
body is bounded in size and nesting and holds only text that is valid Unicode. Every refusal is an OpenAI
error body with a 4xx status.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from dataclasses import dataclass

MAX_JSON_DEPTH = 32
BODY_TIMEOUT_S = 60.0  # the whole body must arrive within this once the headers are in (a slow POST)
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


@dataclass
class GuardSettings:
    allowed_hosts: frozenset[str] | None  # lower-case host names without port; None: any
    cors_origins: frozenset[str]  # scheme://host[:port] a browser page may call from
    api_key: bytes  # empty: no key needed
    max_body_bytes: int
    public_paths: frozenset[str]  # reachable without the key (the chat page, health)


def allowed_hosts(bind_host: str, extra: list[str]) -> frozenset[str] | None:
    """The Host names to accept: the allow-list if given ("*" for any), else the bound address (and, for a
    loopback bind, the loopback names); a wildcard bind with no list accepts any (the API key guards it)."""
    if "*" in extra:
        return None
    names = {h.lower().strip("[]") for h in extra}
    if not extra:
        if bind_host in ("0.0.0.0", "::", ""):
            return None
        names.add(bind_host.lower().strip("[]"))
        if bind_host in LOOPBACK_NAMES:
            names.update(LOOPBACK_NAMES)
    return frozenset(names)


def host_name(host: str) -> str:
    """'Example.com:8000' -> 'example.com'; '[::1]:8000' -> '::1'."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def error_body(message: str, type_: str = "invalid_request_error", param=None, code=None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class BadBody(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.param, self.code = status, param, code


def check_json(data, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Refuse nesting deeper than `max_depth` and text that is not valid Unicode (lone UTF-16 surrogates)."""
    stack = [(data, 1, "")]
    while stack:
        value, depth, path = stack.pop()
        if isinstance(value, str):
            _check_text(value, path)
        elif isinstance(value, (dict, list)):
            if depth > max_depth:
                raise BadBody(400, f"request body nests deeper than {max_depth} levels", param=path or None)
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(key, str):
                    _check_text(key, path)
                where = f"{path}.{key}" if isinstance(key, str) else f"{path}[{key}]"
                stack.append((item, depth + 1, where.lstrip(".")))


def _check_text(text: str, path: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BadBody(
            400,
            "request body holds a lone UTF-16 surrogate (\\ud800-\\udfff); send valid Unicode text",
            param=path or None,
        ) from exc


def parse_json_body(body: bytes):
    """The JSON object in `body`, or BadBody (400) saying what is wrong with it."""
    try:
        text = body.decode("utf-8-sig")  # JSON on the wire is UTF-8 (RFC 8259); a leading BOM is tolerated
    except UnicodeDecodeError as exc:
        raise BadBody(400, f"request body is not UTF-8 text ({str(exc)[:200]})") from exc
    try:
        data = json.loads(text)
    except RecursionError as exc:
        raise BadBody(400, f"request body nests deeper than {MAX_JSON_DEPTH} levels") from exc
    except ValueError as exc:  # JSONDecodeError, or an integer of more digits than Python converts
        raise BadBody(400, f"request body is not valid JSON ({str(exc)[:200]})") from exc
    if not isinstance(data, dict):
        raise BadBody(400, "request body must be a JSON object")
    check_json(data)
    return data


class RequestGuard:
    """ASGI middleware applying `GuardSettings` to every HTTP request."""

    def __init__(self, app, settings: GuardSettings):
        self.app, self.settings = app, settings

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        s = self.settings
        headers: dict[bytes, bytes] = {}
        for name, value in scope.get("headers", []):
            headers.setdefault(name.lower(), value)
        host = headers.get(b"host", b"").decode("latin-1")
        if s.allowed_hosts is not None and host_name(host) not in s.allowed_hosts:
            return await _reply(
                send, 400, error_body("Host header not allowed for this server", code="invalid_host")
            )
        origin = headers.get(b"origin")
        if origin is not None:
            origin_text = origin.decode("latin-1")
            same = origin_text in (f"http://{host}", f"https://{host}")
            if not same and origin_text not in s.cors_origins:
                msg = "cross-origin requests are refused; start the server with --cors-origins to allow one"
                return await _reply(send, 403, error_body(msg, code="origin_not_allowed"))
        method = scope["method"]
        if method == "OPTIONS":  # a preflight that reached here is from an allowed origin without CORS set up
            return await self.app(scope, receive, send)
        if (
            s.api_key
            and scope["path"] not in s.public_paths
            and not _key_ok(headers.get(b"authorization"), s.api_key)
        ):
            msg = "missing or wrong API key; send 'Authorization: Bearer <key>'"
            return await _reply(send, 401, error_body(msg, code="invalid_api_key"))
        if method not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if ctype != b"application/json":
            msg = "send the body as JSON with 'Content-Type: application/json'"
            return await _reply(send, 415, error_body(msg, code="unsupported_media_type"))
        try:
            body = await _read_body(receive, headers.get(b"content-length"), s.max_body_bytes)
            parse_json_body(body)
        except BadBody as exc:
            return await _reply(send, exc.status, error_body(str(exc), param=exc.param, code=exc.code))
        return await self.app(scope, _replay(body, receive), send)


def _key_ok(header: bytes | None, key: bytes) -> bool:
    scheme, _, token = (header or b"").partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), key)


async def _read_body(receive, declared: bytes | None, limit: int) -> bytes:
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise BadBody(
            413, f"request body of {int(declared)} bytes exceeds the limit of {limit}", code="body_too_large"
        )
    body = bytearray()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BODY_TIMEOUT_S
    while True:
        try:
            message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0))
        except asyncio.TimeoutError as exc:
            raise BadBody(
                408, f"the request body did not arrive within {BODY_TIMEOUT_S:.0f} s", code="body_timeout"
            ) from exc
        if message["type"] == "http.disconnect":
            raise BadBody(400, "the client went away before sending the whole body")
        body += message.get("body", b"")
        if len(body) > limit:
            raise BadBody(413, f"request body exceeds the limit of {limit} bytes", code="body_too_large")
        if not message.get("more_body", False):
            return bytes(body)


def _replay(body: bytes, receive):
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: wait for the disconnect as the app expects

    return replay


async def _reply(send, status: int, body: dict) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    if status in (408, 413):  # the rest of the body is still on its way: drop the connection
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})
