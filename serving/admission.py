"""Admission control: a cap on requests in flight, with the rest rejected at once (HTTP 429).

Queueing past capacity only converts overload into latency for everyone: each queued request waits
for the ones ahead, times out at the client, and is often retried, adding load. Rejecting the excess
immediately keeps the admitted requests fast and tells clients to back off. So there is no waiting
here at all: `try_acquire()` answers now.
"""

from __future__ import annotations

import threading
from types import TracebackType


class Shed(Exception):
    """Over capacity: answer 429 (with Retry-After) without doing any work."""


class ConcurrencyLimiter:
    """At most `max_in_flight` holders at once. Non-blocking and thread-safe (the lock guards a few
    integer updates), so it serves asyncio handlers and threadpool handlers alike.

    Use `with limiter:` or `async with limiter:` around the request's work; both raise `Shed` on
    entry when full and release on exit however the block ends (return, exception, cancellation).
    """

    def __init__(self, max_in_flight: int) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        self.max_in_flight = max_in_flight
        self._lock = threading.Lock()
        self._in_flight = 0
        self.admitted = 0  # totals since start, for the metrics (counters: only ever grow)
        self.shed = 0
        self.peak = 0  # the most in flight at once

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def try_acquire(self) -> bool:
        """Take a slot and return True, or count a shed request and return False. Never waits."""
        with self._lock:
            if self._in_flight >= self.max_in_flight:
                self.shed += 1
                return False
            self._in_flight += 1
            self.admitted += 1
            self.peak = max(self.peak, self._in_flight)
            return True

    def release(self) -> None:
        """Give back a slot taken by `try_acquire()`. Releasing more than was taken is a bug that
        would silently raise capacity, so it raises RuntimeError."""
        with self._lock:
            if self._in_flight == 0:
                raise RuntimeError("release() without a matching try_acquire()")
            self._in_flight -= 1

    def stats(self) -> dict[str, int]:
        """A consistent snapshot for the metrics endpoint."""
        with self._lock:
            return {"in_flight": self._in_flight, "max_in_flight": self.max_in_flight,
                    "admitted": self.admitted, "shed": self.shed, "peak": self.peak}

    def __enter__(self) -> ConcurrencyLimiter:
        if not self.try_acquire():
            raise Shed(f"{self.max_in_flight} requests already in flight")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    # The async form is the sync one: nothing here awaits, so there is nothing to make async.
    async def __aenter__(self) -> ConcurrencyLimiter:
        return self.__enter__()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.__exit__(exc_type, exc, tb)
