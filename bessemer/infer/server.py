"""An OpenAI-compatible HTTP API (completions, chat completions, models) over the continuous-batching engine.

Every request is bounded before it reaches the model: the front door (bessemer.infer.guard) checks Host,
Origin, the API key (401), the content type (415), body size (413) and JSON shape; the bodies are pydantic
models (bessemer.infer.openai_api) so a bad field is a 400 naming it; prompt tokens and max_tokens are
checked by the one request path (bessemer.infer.request); a full queue is a 429. Errors use OpenAI's body:
{"error": {"message", "type", "param", "code"}}. Only a failure of the model itself is a 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from bessemer.config.schema import ServeSection
from bessemer.errors import ConfigError
from bessemer.infer.engine import Engine, QueueFull
from bessemer.infer.generate import Sequence
from bessemer.infer.guard import GuardSettings, RequestGuard, allowed_hosts, error_body
from bessemer.infer.loading import InferenceModel
from bessemer.infer.openai_api import (
    COMPLETIONS_DEFAULT_MAX_TOKENS,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ErrorResponse,
    ModelList,
)
from bessemer.infer.request import RequestError, build_request
from bessemer.infer.sampling import SamplingParams

PUBLIC_PATHS = ("/", "/health", "/openapi.json")  # the chat page asks for the key itself
log = logging.getLogger(__name__)
ERROR_RESPONSES = {status: {"model": ErrorResponse} for status in (400, 401, 403, 413, 415, 429)}


class APIError(Exception):
    def __init__(
        self, status: int, message: str, type_: str = "invalid_request_error", param=None, code=None
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def check_settings(s: ServeSection) -> ServeSection:
    """Refuse settings the server cannot run with, naming the option; returns `s`."""
    for key in ("max_body_bytes", "max_prompt_tokens", "max_tokens", "max_batch", "max_connections"):
        if getattr(s, key) < 1:
            raise ConfigError(f"serve.{key}={getattr(s, key)}: use 1 or more")
    if s.kv_blocks < 0:
        raise ConfigError(
            f"serve.kv_blocks={s.kv_blocks}: use 0 (enough for max_batch full contexts) or more"
        )
    if s.max_queue < 0:
        raise ConfigError(f"serve.max_queue={s.max_queue}: use 0 or more")
    if not s.header_timeout_s > 0:
        raise ConfigError(f"serve.header_timeout_s={s.header_timeout_s}: use a number of seconds > 0")
    if s.api_key and not (8 <= len(s.api_key) <= 256 and all(0x21 <= ord(c) <= 0x7E for c in s.api_key)):
        raise ConfigError(
            "--api-key: use 8 to 256 printable ASCII characters without spaces (an HTTP header carries it)"
        )
    for origin in s.cors_origins:
        if origin == "*" or not origin.startswith(("http://", "https://")) or origin.count("/") != 2:
            raise ConfigError(f"serve.cors_origins: {origin!r} is not an origin; write scheme://host[:port]")
    return s


def engine_context_len(loaded: InferenceModel, settings: ServeSection) -> int:
    """Cache length per row: the longest prompt plus the most new tokens, within the model's context."""
    return min(loaded.model.config.max_seq_len, settings.max_prompt_tokens + settings.max_tokens)


def build_engine(loaded: InferenceModel, settings: ServeSection, compile: bool = False) -> Engine:
    """The engine for `settings`; a compiled decode step runs on a static cache (no paging, no prefix cache)."""
    if compile and settings.kv_blocks:
        raise ConfigError(
            f"serve.kv_blocks={settings.kv_blocks}: --compile uses a static cache without blocks; drop one"
        )
    if compile and settings.prefix_cache:
        log.info("--compile: the compiled decode step uses a static cache, so prefix caching is off")
    return Engine(
        loaded.model,
        max_batch=settings.max_batch,
        max_len=engine_context_len(loaded, settings),
        max_queue=settings.max_queue,
        compile=compile,
        kv_blocks=settings.kv_blocks,
        prefix_cache=settings.prefix_cache,
    )


def uvicorn_config(app, settings: ServeSection, **kw):
    """uvicorn's config with the connection cap and header deadline of `settings`."""
    import uvicorn

    from bessemer.infer.connections import bounded_protocol

    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=bounded_protocol(settings.max_connections, settings.header_timeout_s),
        log_level="warning",
        timeout_keep_alive=5,
        **kw,
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
    check_settings(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        engine.start()
        try:
            yield
        finally:
            engine.stop()

    app = FastAPI(title="Bessemer", lifespan=lifespan, docs_url=None, redoc_url=None)
    created = int(time.time())
    ctx = engine_context_len(loaded, settings)

    @app.exception_handler(APIError)
    async def _api_error(_request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(HTTPException)
    async def _http_error(_request, exc: HTTPException):
        status = exc.status_code if exc.status_code < 500 else 400
        return JSONResponse(error_body(str(exc.detail)), status_code=status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request body"}
        loc = [str(part) for part in first.get("loc", ()) if part != "body"]
        param = loc[0] if loc else None  # OpenAI names the top-level field
        where = ".".join(loc)
        message = f"{where}: {first.get('msg', 'invalid value')}" if where else str(first.get("msg"))
        return JSONResponse(error_body(message, param=param), status_code=400)

    guard = GuardSettings(
        allowed_hosts=allowed_hosts(settings.host, settings.allowed_hosts),
        cors_origins=frozenset(settings.cors_origins),
        api_key=settings.api_key.encode(),
        max_body_bytes=settings.max_body_bytes,
        public_paths=frozenset(PUBLIC_PATHS),
    )
    app.add_middleware(RequestGuard, settings=guard)
    if settings.cors_origins:  # outermost: answers allowed origins' preflights
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["authorization", "content-type"],
        )

    @app.get("/", include_in_schema=False)
    async def chat_page():
        from importlib.resources import files

        from fastapi.responses import HTMLResponse

        page = files("bessemer.infer").joinpath("static/chat.html").read_text(encoding="utf-8")
        csp = "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; frame-ancestors 'none'"
        return HTMLResponse(page, headers={"Content-Security-Policy": csp, "X-Frame-Options": "DENY"})

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": loaded.name, **engine.stats()}

    @app.get("/v1/models", response_model=ModelList, responses=ERROR_RESPONSES)
    async def models():
        return {"data": [{"id": loaded.name, "created": created}]}

    @app.post("/v1/completions", response_model=CompletionResponse, responses=ERROR_RESPONSES)
    async def completions(body: CompletionRequest):
        return await run(_job(body, loaded, settings, ctx, chat=False))

    @app.post("/v1/chat/completions", response_model=ChatCompletionResponse, responses=ERROR_RESPONSES)
    async def chat_completions(body: ChatCompletionRequest):
        return await run(_job(body, loaded, settings, ctx, chat=True))

    async def run(job: _Job):
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


def _job(
    body: CompletionRequest | ChatCompletionRequest,
    loaded: InferenceModel,
    settings: ServeSection,
    ctx: int,
    chat: bool,
) -> _Job:
    key = "max_completion_tokens" if chat and body.max_completion_tokens is not None else "max_tokens"
    asked = getattr(body, key)
    if asked is not None and asked > settings.max_tokens:
        raise APIError(400, f"{key}={asked} is above this server's limit of {settings.max_tokens}", param=key)
    default = settings.max_tokens if chat else min(COMPLETIONS_DEFAULT_MAX_TOKENS, settings.max_tokens)
    params = SamplingParams(
        max_new_tokens=asked if asked is not None else default,
        temperature=body.temperature,
        top_k=max(body.top_k, 0),
        top_p=body.top_p,
        repetition_penalty=body.repetition_penalty,
        seed=body.seed,
        stop=body.stops(),
    )
    if chat:
        source = {"messages": [m.as_template_message() for m in body.messages]}
    else:
        source = {"prompt": body.prompt_value()}
    try:
        request = build_request(
            loaded.tokenizer,
            loaded.template,
            params,
            context_len=ctx,
            max_prompt_tokens=settings.max_prompt_tokens,
            fit_max_new_tokens=asked is None,
            ignore_eos=body.ignore_eos,
            **source,
        )
    except RequestError as exc:
        param = key if exc.param == "max_tokens" else exc.param
        raise APIError(400, str(exc), param=param, code=exc.code) from exc
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    seq = Sequence(request.prompt_ids, request.params, loaded.tokenizer)
    return _Job(seq, body.stream, include_usage, chat)
