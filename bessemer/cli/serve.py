"""`bessemer serve`: an OpenAI-compatible HTTP server (continuous batching) on 127.0.0.1 by default."""

from __future__ import annotations

import argparse
import logging

from bessemer.cli.generate import add_model_arguments
from bessemer.config.schema import ServeSection

HELP = "serve a checkpoint over an OpenAI-compatible HTTP API"
log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = ServeSection()
    add_model_arguments(p)
    p.add_argument("--host", default=d.host, help="address to bind (0.0.0.0 exposes it to the network)")
    p.add_argument("--port", type=int, default=d.port)
    p.add_argument(
        "--api-key", default=d.api_key, help="require 'Authorization: Bearer KEY' (or $BESSEMER_API_KEY)"
    )
    p.add_argument("--max-batch", type=int, default=d.max_batch, help="sequences decoded together")
    p.add_argument("--max-queue", type=int, default=d.max_queue, help="waiting requests before 429")
    p.add_argument(
        "--max-tokens", type=int, default=d.max_tokens, help="largest max_tokens a request may ask"
    )
    p.add_argument("--max-prompt-tokens", type=int, default=d.max_prompt_tokens)
    p.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes)


def settings_from_args(args: argparse.Namespace) -> ServeSection:
    import os

    from bessemer.errors import ConfigError

    s = ServeSection(
        host=args.host,
        port=args.port,
        api_key=args.api_key or os.environ.get("BESSEMER_API_KEY", ""),
        max_body_bytes=args.max_body_bytes,
        max_prompt_tokens=args.max_prompt_tokens,
        max_tokens=args.max_tokens,
        max_queue=args.max_queue,
        max_batch=args.max_batch,
    )
    for key in ("max_body_bytes", "max_prompt_tokens", "max_tokens", "max_batch"):
        if getattr(s, key) < 1:
            raise ConfigError(f"--{key.replace('_', '-')}={getattr(s, key)}: use 1 or more")
    if s.max_queue < 0:
        raise ConfigError(f"--max-queue={s.max_queue}: use 0 or more")
    return s


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from bessemer.cli.generate import load
    from bessemer.infer.server import build_app, build_engine

    settings = settings_from_args(args)
    loaded = load(args)
    app = build_app(loaded, build_engine(loaded, settings), settings)
    if settings.host not in ("127.0.0.1", "localhost", "::1") and not settings.api_key:
        log.warning(
            "serving on %s without --api-key: anyone who can reach it can use the model", settings.host
        )
    print(f"serving {loaded.name} on http://{settings.host}:{settings.port}/v1 (template {loaded.template})")
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")
    return 0
