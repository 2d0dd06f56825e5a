"""Connection limits: a client that never finishes its headers blocks no one, and open connections are capped."""

from __future__ import annotations

import socket
import time

import httpx

from tests.infer.server_helpers import running_server, wait_for

PARTIAL = b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"


def open_slow(url: str, n: int) -> list[socket.socket]:
    """n connections that send part of their headers and then nothing."""
    host, port = url.removeprefix("http://").split(":")
    socks = []
    for _ in range(n):
        s = socket.create_connection((host, int(port)), timeout=10)
        s.sendall(PARTIAL)
        socks.append(s)
    return socks


def read_all(s: socket.socket) -> bytes:
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    return data


def test_slow_headers_block_no_one_and_time_out(loaded):
    with running_server(loaded, max_tokens=4, header_timeout_s=1.5, max_connections=64) as (url, _):
        slow = open_slow(url, 20)
        start = time.monotonic()
        r = httpx.post(
            url + "/v1/completions", json={"prompt": "hi", "max_tokens": 2, "temperature": 0}, timeout=30
        )
        assert r.status_code == 200
        assert time.monotonic() - start < 1.5  # answered while the slow clients still hold their sockets
        for s in slow:  # each slow client is told why and closed
            assert read_all(s).startswith(b"HTTP/1.1 408")
            s.close()


def test_connections_over_the_cap_get_429(loaded):
    with running_server(loaded, max_tokens=4, header_timeout_s=2.0, max_connections=4) as (url, _):
        slow = open_slow(url, 4)
        time.sleep(0.2)
        refused = httpx.get(url + "/health", timeout=10)
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "too_many_connections"
        for s in slow:
            s.close()

        def healthy() -> bool:
            return httpx.get(url + "/health", timeout=10).status_code == 200

        wait_for(healthy, timeout=10, what="a free connection slot")
