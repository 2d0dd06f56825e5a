"""An OpenAI-compatible HTTP API (completions, chat completions, models) over the continuous-batching engine.

Every request is bounded before it reaches the model: the front door (bessemer.infer.guard) checks Host,
Origin, the API key (401), the content type (415), body size (413) and JSON shape; the bodies are pydantic
models (bessemer.infer.openai_api) so a bad field is a 400 naming it; prompt tokens and max_tokens are
checked by the one request path (bessemer.infer.request); a full queue is a 429, a model other than the one
served a 404. Errors use OpenAI's body: {"error": {"message", "type", "param", "code"}}. Only a failure of
the model itself is a 500; during shutdown (SIGINT / SIGTERM) requests get a 503 or, streaming, an error event.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

from fastapi import FastAPI, Request
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
    MAX_CHOICES,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ErrorResponse,
    ModelCard,
    ModelList,
)
from bessemer.infer.request import RequestError, build_request
from bessemer.infer.sampling import SamplingParams

PUBLIC_PATHS = ("/", "/health", "/openapi.json")  # the chat page asks for the key itself
log = logging.getLogger(__name__)
ERROR_RESPONSES = {status: {"model": ErrorResponse} for status in (400, 401, 403, 404, 413, 415, 429, 503)}


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
    """A parsed request: one sequence per choice (prompts in order, `n` each) and how to answer."""

    seqs: list[Sequence]
    prompt_tokens: int  # each prompt counted once, however many choices it has (as OpenAI counts)
    stream: bool
    include_usage: bool
    chat: bool


def uvicorn_server(app, settings: ServeSection, **kw):
    """A uvicorn server for `app` whose first SIGINT / SIGTERM also stops the engine: requests in flight end
    at once (a stream with an error event, a plain request with a 503) instead of holding the exit until
    they finish. A second SIGINT forces the exit, as uvicorn does."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            if not self.should_exit:
                app.state.shut_down()
            super().handle_exit(sig, frame)

    return Server(uvicorn_config(app, settings, **kw))


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
    app.state.stopping = False

    def shut_down() -> None:
        app.state.stopping = True  # new requests get 503
        engine.stop()  # requests in flight get an error event now

    app.state.shut_down = shut_down
    created = int(time.time())
    ctx = engine_context_len(loaded, settings)

    @app.exception_handler(APIError)
    async def _api_error(_request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(HTTPException)
    async def _http_error(request, exc: HTTPException):
        status = exc.status_code if exc.status_code < 500 else 400
        message = (
            f"{exc.detail}: {request.method} {request.url.path}" if status in (404, 405) else str(exc.detail)
        )
        return JSONResponse(error_body(message), status_code=status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request body"}
        loc = [part for part in first.get("loc", ()) if part != "body"]
        param = str(loc[0]) if loc else None  # OpenAI names the top-level field
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
        msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        return JSONResponse(error_body(f"{where}: {msg}" if where else msg, param=param), status_code=400)

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

    @app.get("/v1/models/{model_id:path}", response_model=ModelCard, responses=ERROR_RESPONSES)
    async def model(model_id: str):
        if model_id != loaded.name:
            raise APIError(
                404,
                f"model {model_id!r} is not served here; this server serves {loaded.name!r}",
                param="model",
                code="model_not_found",
            )
        return {"id": loaded.name, "created": created}

    @app.post("/v1/completions", response_model=CompletionResponse, responses=ERROR_RESPONSES)
    async def completions(body: CompletionRequest, request: Request):
        return await run(_job(body, loaded, settings, ctx, chat=False), request)

    @app.post("/v1/chat/completions", response_model=ChatCompletionResponse, responses=ERROR_RESPONSES)
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        return await run(_job(body, loaded, settings, ctx, chat=True), request)

    def failure(message: str) -> APIError:
        if app.state.stopping:
            return APIError(503, message, "server_error", code="shutting_down")
        return APIError(500, message, "server_error")

    async def run(job: _Job, request: Request):
        if app.state.stopping:
            raise failure("the server is shutting down")
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def on_event(index: int, kind: str, value: str) -> None:
            loop.call_soon_threadsafe(events.put_nowait, (index, kind, value))

        reqs = []
        try:
            for i, seq in enumerate(job.seqs):
                reqs.append(engine.submit(seq, functools.partial(on_event, i)))
        except (QueueFull, ValueError) as exc:
            for req in reqs:
                engine.cancel(req)
            if isinstance(exc, ValueError):
                raise APIError(400, str(exc), code="context_length_exceeded") from exc
            raise APIError(429, f"server busy: {exc}", "rate_limit_error", code="queue_full") from exc
        if app.state.stopping:  # the engine stopped while these were submitted: nothing will run them
            raise failure("the server is shutting down")
        reply = _Reply(job, loaded.name, loaded.tokenizer)
        if job.stream:
            return StreamingResponse(
                _sse(reply, events, engine, reqs, failure),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )

        async def collect() -> dict:
            texts, finish = [[] for _ in reqs], [None] * len(reqs)
            while None in finish:
                index, kind, value = await events.get()
                if kind == "text":
                    texts[index].append(value)
                elif kind == "done":
                    finish[index] = value
                else:
                    raise failure(value)
            return reply.full(["".join(t) for t in texts], finish)

        # a client that gives up (a timeout, Ctrl-C) must not leave its generation running to max_tokens
        answer, gone = asyncio.ensure_future(collect()), asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({answer, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not answer.done():
                raise APIError(400, "the client went away before the answer was ready")
            return answer.result()
        finally:
            answer.cancel()
            gone.cancel()
            for req in reqs:
                engine.cancel(req)  # no-op once done; frees the rows if the client went away

    return app


async def _sse(reply: _Reply, events: asyncio.Queue, engine: Engine, reqs, failure) -> AsyncIterator[str]:
    try:
        if reply.job.chat:
            for i in range(len(reqs)):
                yield _data(reply.chunk(i, {"role": "assistant", "content": ""}, None))
        left = len(reqs)
        while left:
            index, kind, value = await events.get()
            if kind == "text":
                yield _data(reply.chunk(index, {"content": value}, None, text=value, logprobs=True))
            elif kind == "done":
                yield _data(reply.chunk(index, {}, value, text="", logprobs=True))
                left -= 1
            else:
                yield _data(failure(value).body())
                break
        if not left and reply.job.include_usage:
            yield _data({**reply.head(), "choices": [], "usage": reply.usage()})
        yield "data: [DONE]\n\n"
    finally:
        for req in reqs:
            engine.cancel(req)  # the client disconnected mid-stream: free the rows now


async def _disconnected(request: Request) -> None:
    """Return once the client has closed its connection (the body is already read, so nothing else comes)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _data(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


class _Reply:
    """Builds OpenAI response objects for one request."""

    def __init__(self, job: _Job, model: str, tokenizer):
        self.job, self.model, self.tokenizer = job, model, tokenizer
        self.id = ("chatcmpl-" if job.chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.sent = [0] * len(job.seqs)  # per choice: tokens whose log-probabilities are already sent
        self.offset = [0] * len(job.seqs)  # per choice: characters of those tokens (completions' text_offset)

    def usage(self) -> dict:
        p, c = self.job.prompt_tokens, sum(len(seq.output_ids) for seq in self.job.seqs)
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    def head(self, stream: bool = True) -> dict:
        obj = (
            ("chat.completion.chunk" if stream else "chat.completion") if self.job.chat else "text_completion"
        )
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def full(self, texts: list[str], finish: list[str]) -> dict:
        choices = []
        for i, (text, reason) in enumerate(zip(texts, finish, strict=True)):
            body = {"message": {"role": "assistant", "content": text}} if self.job.chat else {"text": text}
            choices.append({"index": i, **body, "logprobs": self.logprobs(i), "finish_reason": reason})
        return {**self.head(stream=False), "choices": choices, "usage": self.usage()}

    def chunk(
        self, index: int, delta: dict, finish: str | None, text: str = "", logprobs: bool = False
    ) -> dict:
        body = {"delta": delta} if self.job.chat else {"text": text}
        lp = self.logprobs(index) if logprobs else None
        out = {**self.head(), "choices": [{"index": index, **body, "logprobs": lp, "finish_reason": finish}]}
        return {**out, "usage": None} if self.job.include_usage else out  # OpenAI: null until the last chunk

    def _token(self, before: int, token_id: int) -> str:
        """The text `token_id` adds after `before` (decoded alone, a SentencePiece token loses its space)."""
        head = self.tokenizer.decode([before], skip_special_tokens=False)
        return self.tokenizer.decode([before, token_id], skip_special_tokens=False)[len(head) :]

    def logprobs(self, index: int) -> dict | None:
        """The log-probabilities of choice `index`'s tokens not sent yet, in OpenAI's shape for the endpoint;
        None where the request did not ask. A stop token that ends the reply is not part of it."""
        seq = self.job.seqs[index]
        if seq.params.logprobs is None:
            return None
        end = len(seq.logprobs)  # the engine thread appends the token id first, then its log-probabilities
        if end and seq.output_ids[end - 1] in seq.params.stop_token_ids:
            end -= 1
        start, self.sent[index] = self.sent[index], max(end, self.sent[index])
        ids, entries = seq.output_ids[start:end], seq.logprobs[start:end]
        befores = (seq.prompt_ids[-1:] + seq.output_ids)[start:end]  # the token before each one
        tokens = [self._token(b, t) for b, t in zip(befores, ids)]
        tops = [[(self._token(b, i), v) for i, v in top] for b, (_, top) in zip(befores, entries)]
        if self.job.chat:
            return {
                "content": [
                    {**self._choice(token, lp), "top_logprobs": [self._choice(t, v) for t, v in top]}
                    for token, (lp, _), top in zip(tokens, entries, tops, strict=True)
                ]
            }
        offsets = []
        for token in tokens:
            offsets.append(self.offset[index])
            self.offset[index] += len(token)
        return {
            "tokens": tokens,
            "token_logprobs": [lp for lp, _ in entries],
            "top_logprobs": [dict(top) for top in tops],
            "text_offset": offsets,
        }

    @staticmethod
    def _choice(token: str, logprob: float) -> dict:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}


# -- request parsing ----------------------------------------------------------------------------------------


def _job(
    body: CompletionRequest | ChatCompletionRequest,
    loaded: InferenceModel,
    settings: ServeSection,
    ctx: int,
    chat: bool,
) -> _Job:
    if body.model is not None and body.model != loaded.name:
        raise APIError(
            404,
            f"model {body.model!r} is not served here; this server serves {loaded.name!r} (GET /v1/models)",
            param="model",
            code="model_not_found",
        )
    key = "max_completion_tokens" if chat and body.max_completion_tokens is not None else "max_tokens"
    asked = getattr(body, key)
    if asked is not None and asked > settings.max_tokens:
        raise APIError(400, f"{key}={asked} is above this server's limit of {settings.max_tokens}", param=key)
    sources = (
        [{"messages": [m.as_template_message() for m in body.messages]}]
        if chat
        else [{"prompt": p} for p in body.prompt_values()]
    )
    if len(sources) * body.n > MAX_CHOICES:
        raise APIError(
            400,
            f"n={body.n} for {len(sources)} prompts asks for {len(sources) * body.n} choices; "
            f"the limit is {MAX_CHOICES}",
            param="n",
        )
    default = settings.max_tokens if chat else min(COMPLETIONS_DEFAULT_MAX_TOKENS, settings.max_tokens)
    params = SamplingParams(
        max_new_tokens=asked if asked is not None else default,
        temperature=body.temperature,
        top_k=max(body.top_k, 0),
        top_p=body.top_p,
        repetition_penalty=body.repetition_penalty,
        seed=body.seed,
        stop=body.stops(),
        logprobs=((body.top_logprobs or 0) if body.logprobs else None) if chat else body.logprobs,
    )
    seqs, prompt_tokens = [], 0
    for source in sources:
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
            message = f"prompt[{len(seqs) // body.n}]: {exc}" if len(sources) > 1 else str(exc)
            raise APIError(400, message, param=param, code=exc.code) from exc
        prompt_tokens += len(request.prompt_ids)
        for i in range(body.n):
            choice = replace(request.params, seed=choice_seed(body.seed, i))
            seqs.append(Sequence(request.prompt_ids, choice, loaded.tokenizer))
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return _Job(seqs, prompt_tokens, body.stream, include_usage, chat)


def choice_seed(seed: int | None, index: int) -> int | None:
    """The seed of choice `index` of a request seeded `seed`: choice 0 uses the seed itself, so n=1 draws as
    before, and each further choice a different one derived from it (the same for the same request)."""
    if seed is None or index == 0:
        return seed
    return (seed ^ (index * 0x9E3779B97F4A7C15)) & ((1 << 63) - 1)
