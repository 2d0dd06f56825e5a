"""An OpenAI-compatible HTTP API (completions, chat completions, models) over the continuous-batching engine.

Every request is bounded before it reaches the model: body size (413), prompt tokens and max_tokens (400),
requests waiting (429), and an optional API key (401). Errors use OpenAI's body:
{"error": {"message", "type", "param", "code"}}.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from bessemer.config.schema import ServeSection
from bessemer.errors import BessemerError
from bessemer.infer.engine import Engine, QueueFull
from bessemer.infer.generate import Sequence, stop_token_ids
from bessemer.infer.loading import InferenceModel
from bessemer.infer.sampling import SamplingParams

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
MAX_STOP_STRINGS = 16


class APIError(Exception):
    def __init__(
        self, status: int, message: str, type_: str = "invalid_request_error", param=None, code=None
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def engine_context_len(loaded: InferenceModel, settings: ServeSection) -> int:
    """Cache length per row: the longest prompt plus the most new tokens, within the model's context."""
    return min(loaded.model.config.max_seq_len, settings.max_prompt_tokens + settings.max_tokens)


def build_engine(loaded: InferenceModel, settings: ServeSection) -> Engine:
    return Engine(
        loaded.model,
        max_batch=settings.max_batch,
        max_len=engine_context_len(loaded, settings),
        max_queue=settings.max_queue,
    )


@dataclass
class _Job:
    """A parsed request: the sequence to run and how to answer."""

    seq: Sequence
    stream: bool
    include_usage: bool
    chat: bool


def build_app(loaded: InferenceModel, engine: Engine, settings: ServeSection):
    """The FastAPI app; it starts the engine thread on startup and stops it on shutdown."""

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        engine.start()
        try:
            yield
        finally:
            engine.stop()

    app = FastAPI(title="Bessemer", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    created = int(time.time())
    ctx = engine_context_len(loaded, settings)

    @app.exception_handler(APIError)
    async def _api_error(_request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(HTTPException)
    async def _http_error(_request, exc: HTTPException):
        err = APIError(exc.status_code, str(exc.detail), "invalid_request_error")
        return JSONResponse(err.body(), status_code=exc.status_code)

    def check_auth(request: Request) -> None:
        if not settings.api_key:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip(), settings.api_key):
            raise APIError(
                401, "missing or wrong API key; send 'Authorization: Bearer <key>'", code="invalid_api_key"
            )

    async def read_json(request: Request) -> dict:
        limit = settings.max_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise APIError(
                413, f"request body of {declared} bytes exceeds the limit of {limit}", code="body_too_large"
            )
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise APIError(413, f"request body exceeds the limit of {limit} bytes", code="body_too_large")
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise APIError(400, f"request body is not valid JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise APIError(400, "request body must be a JSON object")
        return data

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": loaded.name, **engine.stats()}

    @app.get("/v1/models")
    async def models(request: Request):
        check_auth(request)
        card = {"id": loaded.name, "object": "model", "created": created, "owned_by": "bessemer"}
        return {"object": "list", "data": [card]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        check_auth(request)
        body = await read_json(request)
        ids = _completion_prompt(loaded.tokenizer, body.get("prompt"))
        job = _job(body, ids, loaded, settings, ctx, chat=False)
        return await run(job, body)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        check_auth(request)
        body = await read_json(request)
        messages = _chat_messages(body.get("messages"))
        from bessemer.templates import encode_prompt

        try:
            ids = encode_prompt(loaded.tokenizer, loaded.template, messages)
        except BessemerError as exc:
            raise APIError(400, str(exc), param="messages") from exc
        job = _job(body, ids, loaded, settings, ctx, chat=True)
        return await run(job, body)

    async def run(job: _Job, body: dict):
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def on_event(kind: str, value: str) -> None:
            loop.call_soon_threadsafe(events.put_nowait, (kind, value))

        try:
            req = engine.submit(job.seq, on_event)
        except QueueFull as exc:
            raise APIError(429, f"server busy: {exc}", "rate_limit_error", code="queue_full") from exc
        except ValueError as exc:
            raise APIError(400, str(exc), code="context_length_exceeded") from exc
        reply = _Reply(job, loaded.name)
        if job.stream:
            return StreamingResponse(
                _sse(reply, events, engine, req),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        try:
            text = []
            while True:
                kind, value = await events.get()
                if kind == "text":
                    text.append(value)
                elif kind == "done":
                    return reply.full("".join(text), value)
                else:
                    raise APIError(500, value, "server_error")
        finally:
            engine.cancel(req)  # no-op once done; frees the row if the client went away

    return app


async def _sse(reply: _Reply, events: asyncio.Queue, engine: Engine, req) -> AsyncIterator[str]:
    try:
        if reply.job.chat:
            yield _data(reply.chunk({"role": "assistant", "content": ""}, None))
        while True:
            kind, value = await events.get()
            if kind == "text":
                yield _data(reply.chunk({"content": value}, None, text=value))
            elif kind == "done":
                yield _data(reply.chunk({}, value, text=""))
                if reply.job.include_usage:
                    yield _data({**reply.chunk({}, None), "choices": [], "usage": reply.usage()})
                break
            else:
                yield _data(APIError(500, value, "server_error").body())
                break
        yield "data: [DONE]\n\n"
    finally:
        engine.cancel(req)  # the client disconnected mid-stream: free the row now


class BackgroundServer:
    """Serve `app` with uvicorn on a thread (tests, benchmarks); port 0 picks a free port. Use as a context."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        import socket
        import threading

        import uvicorn

        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.url = f"http://{host}:{self._sock.getsockname()[1]}"
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    def __enter__(self) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + 60
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server on {self.url} did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)
        self._sock.close()


def _data(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


class _Reply:
    """Builds OpenAI response objects for one request."""

    def __init__(self, job: _Job, model: str):
        self.job, self.model = job, model
        self.id = ("chatcmpl-" if job.chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())

    def usage(self) -> dict:
        p, c = len(self.job.seq.prompt_ids), len(self.job.seq.output_ids)
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def full(self, text: str, finish: str) -> dict:
        if self.job.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
            return {**self._head("chat.completion"), "choices": [choice], "usage": self.usage()}
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        return {**self._head("text_completion"), "choices": [choice], "usage": self.usage()}

    def chunk(self, delta: dict, finish: str | None, text: str = "") -> dict:
        if self.job.chat:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {**self._head("chat.completion.chunk"), "choices": [choice]}
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        return {**self._head("text_completion"), "choices": [choice]}


# -- request parsing ----------------------------------------------------------------------------------------


def _completion_prompt(tokenizer, prompt) -> list[int]:
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str) and prompt:
        return tokenizer.encode(prompt)
    if (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
    ):
        vocab = len(tokenizer)
        if any(t < 0 or t >= vocab for t in prompt):
            raise APIError(400, f"prompt token ids must lie in [0, {vocab})", param="prompt")
        return list(prompt)
    raise APIError(400, "prompt must be a non-empty string or list of token ids (one prompt)", param="prompt")


def _chat_messages(messages) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "messages must be a non-empty list", param="messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "developer", "user", "assistant"):
            raise APIError(400, f"messages[{i}] needs role system, user or assistant", param="messages")
        content = m.get("content")
        if isinstance(content, list):  # content parts: only text is understood
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                raise APIError(400, f"messages[{i}]: only text content parts are supported", param="messages")
            content = "".join(str(p.get("text", "")) for p in content)
        if content is not None and not isinstance(content, str):
            raise APIError(400, f"messages[{i}].content must be text", param="messages")
        role = "system" if m["role"] == "developer" else m["role"]
        out.append({"role": role, "content": content or ""})
    return out


def _number(body: dict, key: str, default, lo: float, hi: float, integer: bool = False):
    value = body.get(key)
    if value is None:
        return default
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if not ok or isinstance(value, bool) or not lo <= value <= hi:
        kind = "an integer" if integer else "a number"
        raise APIError(400, f"{key} must be {kind} in [{lo}, {hi}]; got {value!r}", param=key)
    return value


def _job(
    body: dict, ids: list[int], loaded: InferenceModel, settings: ServeSection, ctx: int, chat: bool
) -> _Job:
    for key, bad in (("n", lambda v: v not in (None, 1)), ("best_of", lambda v: v not in (None, 1))):
        if bad(body.get(key)):
            raise APIError(
                400, f"{key} other than 1 is not supported; send one request per sample", param=key
            )
    for key in ("echo", "logprobs", "top_logprobs", "suffix", "tools", "functions", "logit_bias"):
        if body.get(key) not in (None, False, {}, []):
            raise APIError(400, f"{key} is not supported by this server", param=key)
    for key in ("presence_penalty", "frequency_penalty"):
        if body.get(key) not in (None, 0, 0.0):
            raise APIError(400, f"{key} is not supported; use repetition_penalty", param=key)
    if len(ids) > settings.max_prompt_tokens:
        raise APIError(
            400,
            f"prompt has {len(ids)} tokens; the limit is {settings.max_prompt_tokens}",
            param="messages" if chat else "prompt",
            code="context_length_exceeded",
        )
    room = ctx - len(ids)
    if room < 1:
        raise APIError(
            400, f"prompt of {len(ids)} tokens fills the context of {ctx}", code="context_length_exceeded"
        )
    key = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
    default = min(settings.max_tokens, room) if chat else min(COMPLETIONS_DEFAULT_MAX_TOKENS, room)
    max_tokens = _number(body, key, default, 1, settings.max_tokens, integer=True)
    if max_tokens > room:
        raise APIError(
            400,
            f"prompt ({len(ids)} tokens) + {key} ({max_tokens}) exceeds the context of {ctx}",
            param=key,
            code="context_length_exceeded",
        )
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else stop or []
    if (
        not isinstance(stop, list)
        or len(stop) > MAX_STOP_STRINGS
        or not all(isinstance(s, str) for s in stop)
    ):
        raise APIError(
            400, f"stop must be a string or a list of up to {MAX_STOP_STRINGS} strings", param="stop"
        )
    ignore_eos = body.get("ignore_eos", False)
    if not isinstance(ignore_eos, bool):
        raise APIError(400, "ignore_eos must be true or false", param="ignore_eos")
    stop_ids = stop_token_ids(loaded.tokenizer)
    if chat:
        from bessemer.templates import stop_strings

        template_stops = stop_strings(loaded.template, loaded.tokenizer)
        stop = [*stop, *template_stops]
        stop_ids += [i for i in stop_token_ids(loaded.tokenizer, template_stops) if i not in stop_ids]
    if ignore_eos:  # for benchmarks: run to max_tokens whatever the model says
        stop_ids = [i for i in stop_ids if i != loaded.tokenizer.eos_token_id]
    top_k = _number(body, "top_k", 0, -1, 1 << 30, integer=True)
    params = SamplingParams(
        max_new_tokens=max_tokens,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_k=max(top_k, 0),
        top_p=_number(body, "top_p", 1.0, 1e-9, 1.0),
        repetition_penalty=_number(body, "repetition_penalty", 1.0, 1e-3, 100.0),
        seed=_number(body, "seed", None, -(1 << 63), (1 << 63) - 1, integer=True),
        stop=stop,
        stop_token_ids=stop_ids,
    )
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise APIError(400, "stream must be true or false", param="stream")
    options = body.get("stream_options") or {}
    include_usage = bool(isinstance(options, dict) and options.get("include_usage"))
    return _Job(Sequence(ids, params, loaded.tokenizer), stream, include_usage, chat)
