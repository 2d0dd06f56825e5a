"""Run the OpenAI-compatible server in-process on a free 127.0.0.1 port (tests, benchmarks)."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager

from bessemer.config.schema import ServeSection


class BackgroundServer:
    """Serve `app` with uvicorn on a thread; port 0 picks a free port. Use as a context."""

    def __init__(self, app, settings: ServeSection | None = None, host: str = "127.0.0.1", port: int = 0):
        from bessemer.infer.server import uvicorn_server

        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.port = self._sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self._server = uvicorn_server(app, settings or ServeSection(), lifespan="on")
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


@contextmanager
def running_server(loaded, **settings):
    from bessemer.infer.server import build_app, build_engine

    cfg = ServeSection(**settings)
    engine = build_engine(loaded, cfg)
    with BackgroundServer(build_app(loaded, engine, cfg), cfg) as server:
        yield server.url, engine


def wait_for(predicate, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
