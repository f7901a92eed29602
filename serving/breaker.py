"""Circuit breakers: stop calling a dependency that is failing or slow, and probe it to come back.

closed --(errors or latency over threshold in the window)--> open --(open_seconds)--> half-open
half-open --(trial calls succeed)--> closed;  half-open --(a trial fails)--> open

While a breaker is open, serving skips the dependency at once and takes its fallback (cached or
popular items, the retrieval order instead of the ranker's) instead of waiting on timeouts. One
breaker per dependency ("redis", "ann", "ranker"), so one slow box does not take the others down.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum


class State(str, Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class BreakerOpen(Exception):
    """The dependency is short-circuited: take the fallback, don't call it."""


@dataclass(frozen=True)
class BreakerPolicy:
    window_calls: int = 50  # the window is the last N calls ...
    window_seconds: float = 30.0  # ... that are at most T seconds old
    min_calls: int = 10  # never judge on fewer calls than this (one early error is not a 100% rate)
    error_rate: float = 0.5  # open when failures / calls >= this
    latency_quantile: float = 0.95
    latency_s: float | None = None  # open when that quantile of latency >= this; None: ignore latency
    open_seconds: float = 5.0  # how long to short-circuit before probing again
    trial_calls: int = 1  # calls admitted while half-open; all must succeed to close

    def __post_init__(self) -> None:
        if not 1 <= self.min_calls <= self.window_calls:  # else the window never holds enough calls
            raise ValueError(f"need 1 <= min_calls <= window_calls, got {self.min_calls}, {self.window_calls}")
        if not (0 < self.error_rate <= 1 and 0 < self.latency_quantile <= 1 and self.trial_calls >= 1):
            raise ValueError(f"invalid breaker policy: {self}")


class CircuitBreaker:
    """Thread-safe; the lock is held for microseconds and nothing blocks, so it is safe to use from
    asyncio code. The clock is injected (seconds, monotonic) so tests need not sleep."""

    def __init__(self, name: str, policy: BreakerPolicy = BreakerPolicy(),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name, self.policy, self._clock = name, policy, clock
        self._lock = threading.Lock()
        self._calls: deque[tuple[float, bool, float]] = deque(maxlen=policy.window_calls)
        self._state = State.CLOSED
        self._since = clock()  # when the current state began
        self._trials = self._trial_successes = 0

    @property
    def state(self) -> State:
        """The current state; an open breaker whose open_seconds have passed reads as half-open."""
        with self._lock:
            self._advance(self._clock())
            return self._state

    def allow(self) -> bool:
        """Whether to call the dependency now. In half-open, True only for the admitted trials."""
        with self._lock:
            now = self._clock()
            self._advance(now)
            if self._state is State.CLOSED:
                return True
            if self._state is State.HALF_OPEN and self._trials < self.policy.trial_calls:
                self._trials += 1
                return True
            return False

    def record(self, success: bool, latency_s: float) -> None:
        """Report the outcome of a call that `allow()` admitted (a timeout is `success=False`).
        While half-open, results count only as long as a trial is outstanding (results carry no
        ticket, so a straggler reporting while a trial is out is taken as that trial's)."""
        with self._lock:
            now = self._clock()
            self._advance(now)
            p = self.policy
            if self._state is State.OPEN:
                return  # a straggler admitted before the breaker opened: the verdict is already in
            if self._state is State.HALF_OPEN:
                if self._trial_successes >= self._trials:
                    # No trial of this half-open period is outstanding: a straggler admitted before
                    # the breaker opened. Its verdict is stale; only the trials may close or reopen it.
                    return
                # A slow success is not a recovery when latency is what the breaker watches.
                if not success or (p.latency_s is not None and latency_s >= p.latency_s):
                    self._enter(State.OPEN, now)
                else:
                    self._trial_successes += 1
                    if self._trial_successes >= p.trial_calls:
                        self._enter(State.CLOSED, now)
                return
            self._calls.append((now, success, latency_s))
            self._prune(now)
            if len(self._calls) >= p.min_calls and self._tripped():
                self._enter(State.OPEN, now)

    @contextmanager
    def guard(self) -> Iterator[None]:
        """`with breaker.guard(): ...` (also around an `await`): raises BreakerOpen when not allowed,
        else records the block's outcome and duration. Any Exception counts as a failure; put the
        timeout inside the block so it surfaces here as TimeoutError. A cancellation
        (BaseException) is not the dependency's fault and is not recorded."""
        if not self.allow():
            raise BreakerOpen(self.name)
        start = self._clock()
        try:
            yield
        except Exception:
            self.record(False, self._clock() - start)
            raise
        self.record(True, self._clock() - start)

    def _tripped(self) -> bool:
        p, n = self.policy, len(self._calls)
        failures = sum(1 for _, ok, _ in self._calls if not ok)
        if failures / n >= p.error_rate:
            return True
        if p.latency_s is None:
            return False
        latencies = sorted(lat for _, _, lat in self._calls)
        rank = max(1, math.ceil(p.latency_quantile * n))  # nearest-rank quantile
        return latencies[rank - 1] >= p.latency_s

    def _prune(self, now: float) -> None:
        while self._calls and now - self._calls[0][0] > self.policy.window_seconds:
            self._calls.popleft()

    def _advance(self, now: float) -> None:
        # Time-driven transitions happen lazily, on the next look: no timer thread.
        if self._state is State.OPEN and now - self._since >= self.policy.open_seconds:
            self._enter(State.HALF_OPEN, now)
        elif (self._state is State.HALF_OPEN and self._trials >= self.policy.trial_calls
              and now - self._since >= self.policy.open_seconds):
            # A trial was admitted but never reported (its caller was cancelled): probe afresh
            # rather than stay half-open and refuse everything forever.
            self._enter(State.HALF_OPEN, now)

    def _enter(self, state: State, now: float) -> None:
        self._state, self._since = state, now
        self._trials = self._trial_successes = 0
        self._calls.clear()  # each closed period is judged on its own calls only


class Breakers:
    """One breaker per dependency name, created on first use with the default policy unless one is
    given for that name; `states()` feeds /health and the metrics."""

    def __init__(self, policies: dict[str, BreakerPolicy] | None = None,
                 default: BreakerPolicy = BreakerPolicy(), clock: Callable[[], float] = time.monotonic):
        self._policies, self._default, self._clock = dict(policies or {}), default, clock
        self._breakers: dict[str, CircuitBreaker] = {}
        self._lock = threading.Lock()

    def __getitem__(self, name: str) -> CircuitBreaker:
        with self._lock:
            if name not in self._breakers:
                policy = self._policies.get(name, self._default)
                self._breakers[name] = CircuitBreaker(name, policy, self._clock)
            return self._breakers[name]

    def states(self) -> dict[str, str]:
        with self._lock:
            breakers = list(self._breakers.values())
        return {b.name: b.state.value for b in breakers}
