"""Continuous batching: one thread owns the model and a KV cache of `max_batch` rows; requests come and go.

Between two decode steps the engine drops cancelled requests, prefills waiting prompts into free rows, and
then decodes every active row by one token. A finished or cancelled request frees its row at once, so a
long generation never holds up a short one behind it.

The cache is paged (bessemer.infer.blocks): a waiting request joins only when it can get the blocks for its
whole prompt and max_new_tokens, so a running request never runs out; until then it waits at the head of
the queue, and a full queue is answered 429 by the server. Requests with the same prompt prefix share
its blocks, and a later one prefills only the tokens after its longest cached prefix.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from bessemer.infer.generate import READ_BUCKET, DecodeBatch, Sequence
from bessemer.models import Transformer

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """More requests are waiting than the engine accepts (the server answers 429)."""


@dataclass(eq=False)
class Request:
    """A sequence submitted to the engine and the callback that receives its events.

    `on_event(kind, value)` is called from the engine thread: ("text", delta), then ("done", finish_reason),
    or ("error", message). It must not block.
    """

    seq: Sequence
    on_event: Callable[[str, str], None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    done: bool = False


class Engine:
    """Owns the model; `submit` from any thread, `stats` for monitoring; `start` / `stop` the loop."""

    def __init__(
        self,
        model: Transformer,
        max_batch: int,
        max_len: int,
        max_queue: int,
        compile: bool = False,
        kv_blocks: int = 0,
        prefix_cache: bool = True,
    ):
        """compile: torch.compile the decode step on a static cache read whole (fixed shapes), without
        paging or prefix caching. Otherwise the cache is paged: `kv_blocks` blocks (0: every row's full
        context), shared between requests with the same prompt prefix unless `prefix_cache` is off."""
        self.model = model
        self.max_batch, self.max_len, self.max_queue = max_batch, max_len, max_queue
        self._batch = DecodeBatch(
            model,
            max_batch,
            max_len,
            bucket=0 if compile else READ_BUCKET,
            compile=compile,
            paged=not compile,
            kv_blocks=kv_blocks,
            prefix_cache=prefix_cache,
        )
        self._waiting: collections.deque[Request] = collections.deque()
        self._running: dict[int, Request] = {}  # id(seq) -> request, for rows in the batch
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._counts = {"completed": 0, "cancelled": 0, "failed": 0, "steps": 0, "generated_tokens": 0}

    def start(self) -> None:
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name="bessemer-engine", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def submit(self, seq: Sequence, on_event: Callable[[str, str], None]) -> Request:
        """Queue a sequence; raises QueueFull when `max_queue` requests are already waiting."""
        if not self._batch.fits(seq):
            length = len(seq.prompt_ids) + seq.params.max_new_tokens
            if length <= self.max_len:
                blocks = self._batch.blocks
                raise ValueError(
                    f"prompt + max_new_tokens ({length} positions) needs more than the {blocks.num_blocks} "
                    f"KV-cache blocks of {blocks.block_size} positions this server has (serve --kv-blocks)"
                )
            raise ValueError(f"prompt + max_new_tokens exceeds the engine's context of {self.max_len}")
        req = Request(seq, on_event)
        with self._cond:
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests already waiting; retry later")
            self._waiting.append(req)
            self._cond.notify_all()
        return req

    def cancel(self, req: Request) -> None:
        """Stop a request (its client went away); its row is freed before the next step."""
        if not req.done:
            req.cancelled.set()
            with self._cond:
                self._cond.notify_all()

    def stats(self) -> dict:
        with self._cond:
            batch = self._batch
            out = {
                "max_batch": self.max_batch,
                "active": len(self._running),
                "free_rows": len(batch.free()),
                "queued": len(self._waiting),
                "prefilled_tokens": batch.prefilled_tokens,
                **self._counts,
            }
            if batch.blocks is not None:
                out |= {
                    "kv_blocks": batch.blocks.num_blocks,
                    "kv_blocks_available": batch.blocks.available,
                    "prefix_cached_blocks": batch.blocks.cached,
                    "prefix_hit_tokens": batch.blocks.hit_tokens,
                }
            return out

    # -- engine thread ----------------------------------------------------------------------------------

    def _loop(self) -> None:
        with torch.no_grad():
            while True:
                with self._cond:
                    while not self._stopping and not self._waiting and not self._running:
                        self._cond.wait()
                    if self._stopping:
                        self._fail_all("the server is shutting down")
                        return
                    self._drop_cancelled()
                    admit = []
                    while self._waiting and len(admit) < len(self._batch.free()):
                        admit.append(self._waiting.popleft())
                    for req in admit:
                        self._running[id(req.seq)] = req
                try:
                    taken, events = self._batch.admit([r.seq for r in admit]) if admit else (0, [])
                    if taken < len(admit):  # no KV blocks for the rest yet: they wait, first in line
                        with self._cond:
                            for req in reversed(admit[taken:]):
                                del self._running[id(req.seq)]
                                self._waiting.appendleft(req)
                    if self._batch.active():
                        events += self._batch.step()
                except (
                    Exception
                ) as exc:  # a bug or out-of-memory must not kill the server: fail these requests
                    log.exception("engine step failed")
                    with self._cond:
                        self._fail_all(f"generation failed: {exc}", waiting=False)
                    continue
                with self._cond:
                    self._counts["steps"] += 1
                    self._dispatch(events)

    def _dispatch(self, events: list[tuple[Sequence, str]]) -> None:
        for seq, text in events:
            req = self._running.get(id(seq))
            if req is None:
                continue
            self._counts["generated_tokens"] += 1 if seq.output_ids else 0
            if text:
                self._send(req, "text", text)
            if seq.finished:
                req.done = True
                del self._running[id(seq)]
                self._counts["completed"] += 1
                self._send(req, "done", seq.finish_reason)

    def _drop_cancelled(self) -> None:
        for req in [r for r in self._waiting if r.cancelled.is_set()]:
            self._waiting.remove(req)
            req.done = True
            self._counts["cancelled"] += 1
        for row in self._batch.active():
            req = self._running.get(id(self._batch.rows[row]))
            if req is not None and req.cancelled.is_set():
                self._batch.release(row)
                del self._running[id(req.seq)]
                req.done = True
                self._counts["cancelled"] += 1

    def _fail_all(self, message: str, waiting: bool = True) -> None:
        for row in self._batch.active():
            self._batch.release(row)
        reqs = list(self._running.values()) + (list(self._waiting) if waiting else [])
        self._running.clear()
        if waiting:
            self._waiting.clear()
        for req in reqs:
            req.done = True
            self._counts["failed"] += 1
            self._send(req, "error", message)

    @staticmethod
    def _send(req: Request, kind: str, value: str) -> None:
        try:
            req.on_event(kind, value)
        except Exception:  # the client's event loop is gone; the request is cancelled
            req.cancelled.set()
