"""Connection limits under uvicorn: a cap on open connections and a deadline for a request's headers.

uvicorn serves every connection on one event loop, so a slow client never blocks another, but each open
socket holds memory and a file descriptor. A connection over the cap is answered 429 and closed; one that has
not finished its request headers within `header_timeout_s` (a "slowloris") is answered 408 and closed.
"""

from __future__ import annotations

import asyncio
import json

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


def _raw_response(status: int, reason: str, message: str, code: str) -> bytes:
    body = json.dumps(
        {
            "error": {
                "message": message,
                "type": "rate_limit_error" if status == 429 else "invalid_request_error",
                "param": None,
                "code": code,
            }
        }
    ).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode() + body


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with `max_connections` and `header_timeout_s` (set by `bounded_protocol`)."""

    max_connections = 256
    header_timeout_s = 10.0

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._refused = len(self.connections) > self.max_connections
        self._start_header_timer()

    def data_received(self, data: bytes) -> None:
        if self._refused:  # answer once the client has sent something, so it reads the answer
            self._close_with(
                429, "Too Many Requests", "too many open connections; retry later", "too_many_connections"
            )
            return
        super().data_received(data)
        if self.conn.their_state is h11.IDLE:
            self._start_header_timer()  # still waiting for (the rest of) a request's headers
        else:
            self._cancel_header_timer()

    def connection_lost(self, exc) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._cancel_header_timer()  # idle keep-alive: uvicorn's own timer closes it

    def _start_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._on_header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _on_header_timeout(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and (self.cycle is None or self.cycle.response_complete):
            if self._refused:
                self._close_with(
                    429, "Too Many Requests", "too many open connections", "too_many_connections"
                )
            else:
                msg = f"request headers not complete within {self.header_timeout_s:g}s"
                self._close_with(408, "Request Timeout", msg, "request_timeout")

    def _close_with(self, status: int, reason: str, message: str, code: str) -> None:
        if not self.transport.is_closing():
            self.transport.write(_raw_response(status, reason, message, code))
            self.transport.close()


def bounded_protocol(max_connections: int, header_timeout_s: float) -> type[BoundedH11Protocol]:
    """A protocol class for `uvicorn.Config(http=...)` with these limits."""
    return type(
        "BoundedH11Protocol",
        (BoundedH11Protocol,),
        {"max_connections": max_connections, "header_timeout_s": header_timeout_s},
    )
