"""`bessemer serve`: an OpenAI-compatible HTTP server (continuous batching) on 127.0.0.1 by default."""

from __future__ import annotations

import argparse
import dataclasses
import logging

from bessemer.cli.generate import add_model_arguments, job_config

HELP = "serve a checkpoint over an OpenAI-compatible HTTP API"
log = logging.getLogger(__name__)

# [serve] keys with a command-line option; an option left out keeps the TOML's (or the default) value
SERVE_KEYS = (
    "host",
    "port",
    "api_key",
    "max_batch",
    "max_queue",
    "max_tokens",
    "max_prompt_tokens",
    "max_body_bytes",
    "allowed_hosts",
    "cors_origins",
    "max_connections",
    "header_timeout_s",
    "kv_blocks",
    "prefix_cache",
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--host", help="address to bind (default 127.0.0.1; 0.0.0.0 exposes it to the network)")
    p.add_argument("--port", type=int, help="default 8000")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (or $BESSEMER_API_KEY)")
    p.add_argument("--max-batch", type=int, help="sequences decoded together")
    p.add_argument("--max-queue", type=int, help="waiting requests before 429")
    p.add_argument("--max-tokens", type=int, help="largest max_tokens a request may ask")
    p.add_argument("--max-prompt-tokens", type=int)
    p.add_argument("--max-body-bytes", type=int)
    p.add_argument(
        "--allowed-hosts",
        type=lambda v: [h for h in v.split(",") if h],
        help="comma-separated Host names to answer (default: the bound address; '*': any)",
    )
    p.add_argument(
        "--cors-origins",
        type=lambda v: [o for o in v.split(",") if o],
        help="comma-separated web origins (scheme://host:port) allowed to call the API from a browser",
    )
    p.add_argument("--max-connections", type=int, help="open connections before new ones get 429")
    p.add_argument("--header-timeout-s", type=float, help="seconds a client has to send its request headers")
    p.add_argument(
        "--kv-blocks",
        type=int,
        help="KV-cache blocks of 16 positions shared by all requests (default: max-batch full contexts)",
    )
    p.add_argument(
        "--no-prefix-cache",
        dest="prefix_cache",
        action="store_const",
        const=False,
        help="do not reuse the cached keys of an identical prompt prefix (every request prefills in full)",
    )


def settings_from_args(args: argparse.Namespace, cfg=None):
    import os

    from bessemer.infer.server import check_settings

    cfg = cfg or job_config(args)
    given = {k: getattr(args, k) for k in SERVE_KEYS if getattr(args, k, None) is not None}
    s = dataclasses.replace(cfg.serve, **given)
    if not s.api_key and os.environ.get("BESSEMER_API_KEY"):
        s = dataclasses.replace(s, api_key=os.environ["BESSEMER_API_KEY"])
    return check_settings(s)


def run(args: argparse.Namespace) -> int:
    from bessemer.cli.generate import load
    from bessemer.infer.server import build_app, build_engine, uvicorn_server

    cfg = job_config(args)
    settings = settings_from_args(args, cfg)
    loaded = load(args, cfg.generate)
    app = build_app(loaded, build_engine(loaded, settings, compile=cfg.generate.compile), settings)
    if settings.host not in ("127.0.0.1", "localhost", "::1") and not settings.api_key:
        log.warning(
            "serving on %s without --api-key: anyone who can reach it can use the model", settings.host
        )
    print(f"serving {loaded.name} on http://{settings.host}:{settings.port}/v1 (template {loaded.template})")
    uvicorn_server(app, settings).run()
    return 0
