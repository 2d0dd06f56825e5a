"""Run the OpenAI-compatible server in-process on a free 127.0.0.1 port for a test."""

from __future__ import annotations

import time
from contextlib import contextmanager

from bessemer.config.schema import ServeSection


@contextmanager
def running_server(loaded, **settings):
    from bessemer.infer.server import BackgroundServer, build_app, build_engine

    cfg = ServeSection(**settings)
    engine = build_engine(loaded, cfg)
    with BackgroundServer(build_app(loaded, engine, cfg)) as server:
        yield server.url, engine


def wait_for(predicate, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
