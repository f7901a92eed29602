"""Hot reload: follow the registry's champion alias and swap the serving models by reference.

`Reloader.check()` asks the registry which version holds ``champion``; when it differs from the
version being served (or when forced), the bundle is loaded in a worker thread (`asyncio.to_thread`:
downloading and unpickling never block the event loop) and handed to `swap`, which replaces one
reference (``funnel.models = new``). A request reads that reference once at its start, so requests in
flight finish on the object they started with, and nothing is mutated while it is searched.

A failed poll or load keeps the models being served; it is logged and counted (`stats()`), and the
next poll tries again. Checks never overlap: a forced check (POST /admin/reload) waits for a poll in
progress, then looks again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from eightbox.serving.background import BackgroundLoop

log = logging.getLogger(__name__)


class NoChampion(LookupError):
    """The registry has no champion to load (the admin endpoint answers 404)."""


class Reloader(BackgroundLoop):
    """`champion()` → the registry version holding the alias, or None; `load(version)` → a ModelSet
    (blocking; run in a thread); `swap(models)` installs it. `current` is the version served now."""
    task_name = "champion-reloader"

    def __init__(self, champion: Callable[[], str | None], load: Callable[[str], Any],
                 swap: Callable[[Any], None], interval_s: float, current: str | None = None):
        self._champion, self._load, self._swap = champion, load, swap
        self.interval_s, self.current = interval_s, current
        self._lock = asyncio.Lock()
        self._counts = dict(polls=0, reloads=0, poll_failures=0, load_failures=0)
        self.last_error: str | None = None
        self.loaded_at: float | None = time.time() if current is not None else None

    async def check(self, force: bool = False) -> dict[str, Any]:
        """Load the champion if it moved (or if `force`). Returns {"version", "previous", "changed",
        "seconds"}; raises NoChampion when there is none, and re-raises a failed poll or load (counted,
        the old models kept) so an operator's reload sees why."""
        async with self._lock:
            self._counts["polls"] += 1
            try:
                version = await asyncio.to_thread(self._champion)
            except Exception as exc:
                self._fail("poll_failures", f"champion lookup failed: {type(exc).__name__}: {exc}")
                raise
            if version is None:
                raise NoChampion("the registry has no champion yet")
            previous = self.current
            if version == previous and not force:
                return {"version": version, "previous": previous, "changed": False, "seconds": 0.0}
            started = time.perf_counter()
            try:
                models = await asyncio.to_thread(self._load, version)
            except Exception as exc:
                self._fail("load_failures", f"loading v{version} failed: {type(exc).__name__}: {exc}")
                raise
            self._swap(models)  # one reference: requests in flight keep the object they started with
            self.current, self.loaded_at, self.last_error = version, time.time(), None
            self._counts["reloads"] += 1
            seconds = round(time.perf_counter() - started, 3)
            log.info("serving champion v%s (was %s), loaded in %.1f s", version, previous, seconds)
            return {"version": version, "previous": previous, "changed": version != previous, "seconds": seconds}

    def _fail(self, counter: str, message: str) -> None:
        self._counts[counter] += 1
        self.last_error = message
        log.warning("reload: %s; keeping v%s", message, self.current)

    async def run(self) -> None:
        """Poll every `interval_s` until cancelled; failures are counted and the old models kept."""
        while True:
            try:
                await self.check()
            except NoChampion:
                pass
            except Exception:  # already counted and logged by check()
                pass
            await asyncio.sleep(self.interval_s)

    def stats(self) -> dict[str, float]:
        """Counters for the metrics endpoint, plus the served version (0 when none)."""
        try:
            version = float(self.current) if self.current is not None else 0.0
        except ValueError:
            version = -1.0
        return {**self._counts, "champion_version": version}
