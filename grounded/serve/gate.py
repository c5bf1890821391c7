"""One model at a time, a bounded queue in front of it: beyond the queue a request is refused (HTTP 503),
never piled up until memory runs out."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

__all__ = ["Busy", "ModelGate"]


class Busy(Exception):
    """The model's queue is full, or a request waited too long; ``retry_after`` in seconds."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ModelGate:
    """Serializes the calls of one model: one runs, at most ``queue_size`` wait (each at most
    ``timeout_s``), the others get :class:`Busy` at once."""

    def __init__(self, name: str, queue_size: int = 8, timeout_s: float = 120.0) -> None:
        self.name = name
        self.queue_size = queue_size
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._state = threading.Lock()
        self._waiting = 0
        self._running = 0
        self._last_s = 1.0  # duration of the last call, for Retry-After

    @property
    def waiting(self) -> int:
        """Requests queued for the model now."""
        return self._waiting

    @property
    def running(self) -> int:
        return self._running

    def _retry_after(self) -> int:
        return max(1, round(self._last_s * (self._waiting + 1)))

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Run the block with the model to itself; raises :class:`Busy` when the queue is full or the wait
        exceeds ``timeout_s``."""
        with self._state:
            if self._running and self._waiting >= self.queue_size:
                raise Busy(f"the {self.name} is busy ({self._waiting} requests waiting)", self._retry_after())
            self._waiting += 1
        try:
            acquired = self._lock.acquire(timeout=self.timeout_s)
        finally:
            with self._state:
                self._waiting -= 1
        if not acquired:
            raise Busy(f"the {self.name} is busy (waited {self.timeout_s:g} s)", self._retry_after())
        self._running = 1
        start = time.perf_counter()
        try:
            yield
        finally:
            self._last_s = time.perf_counter() - start
            self._running = 0
            self._lock.release()
