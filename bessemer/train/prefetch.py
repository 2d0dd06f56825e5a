"""Micro-batches made ahead: a background thread reads the next batches while the step runs on the current one.

One producer thread takes batches from the source in order, so the order is the source's own; each batch comes
with the source's state after it, and `state_dict()` is the state after the last batch handed out (not the
last made), so a checkpoint resumes exactly where the training loop stopped.
"""

from __future__ import annotations

import contextlib
import copy
import queue
import threading

import torch


class Prefetcher:
    """Wraps a Stateful batch iterator (`__next__`, `state_dict`, `load_state_dict`, `meta`)."""

    def __init__(self, source, depth: int = 2, pin_memory: bool = False):
        self.source = source
        self.meta = getattr(source, "meta", {})
        self.depth = depth
        self.pin_memory = pin_memory
        self._state = copy.deepcopy(source.state_dict())
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        if self._thread is None:
            self._start()
        item = self._queue.get()
        if isinstance(item, BaseException):
            self.close()
            raise item
        batch, self._state = item
        return batch

    def state_dict(self) -> dict:
        return copy.deepcopy(self._state)

    def load_state_dict(self, state: dict) -> None:
        self.close()  # batches made from the old position are dropped
        self.source.load_state_dict(state)
        self._state = copy.deepcopy(self.source.state_dict())

    def close(self) -> None:
        """Stop the producer (the next `__next__` starts a new one from the source's current position)."""
        if self._thread is None:
            return
        self._stop.set()
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):  # unblock a producer waiting for room
                self._queue.get(timeout=0.05)
        self._thread.join()
        self._thread = self._queue = None
        self._stop = threading.Event()
        self.source.load_state_dict(self._state)  # back to the last batch handed out

    def _start(self) -> None:
        self._queue = queue.Queue(maxsize=self.depth)
        self._thread = threading.Thread(target=self._produce, name="bessemer-prefetch", daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        while not self._stop.is_set():
            try:
                batch = next(self.source)
                if self.pin_memory:
                    batch = {k: v.pin_memory() for k, v in batch.items()}
                item = (batch, copy.deepcopy(self.source.state_dict()))
            except BaseException as exc:  # handed to the loop, which raises it
                item = exc
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.05)
                    break
                except queue.Full:
                    pass
            if isinstance(item, BaseException):
                return
