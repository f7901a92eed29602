"""Hot reload: follow the registry's champion, challenger and holdback aliases and the experiment
tags, and swap one `ServingState` by reference.

`Reloader.check()` polls the registry once (`poll()`: the version each alias names, and the
experiment). Each arm whose version moved is loaded in a worker thread (`asyncio.to_thread`:
downloading and unpickling never block the event loop); a version already loaded for another arm is
reused, not loaded twice. Then one new `ServingState` goes to `swap`, which replaces one reference:
requests in flight finish on the state they started with, and nothing is mutated while it is used.

Failures: a failed poll, or a champion that does not load, keeps the state being served; it is
logged and counted (`stats()`), re-raised for an operator's reload, and the next poll tries again. A
challenger or holdback that does not load is counted and left out of the new state: its users get
the champion until a later poll loads it. Checks never overlap: a forced check (POST /admin/reload)
waits for a poll in progress, then looks again, and reloads the champion even if it did not move.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from eightbox.serving.arms import ARMS, ServingState
from eightbox.serving.background import BackgroundLoop
from eightbox.serving.experiments import CHAMPION, ExperimentConfig

log = logging.getLogger(__name__)


class NoChampion(LookupError):
    """The registry has no champion to load (the admin endpoint answers 404)."""


class Reloader(BackgroundLoop):
    """`poll()` → {"champion", "challenger", "holdback": version or None, "experiment": the
    `registry.serving_experiment` dict, "experiment_error": why the tags were refused, or None};
    `load(arm, version)` → a ModelSet (blocking; run in a thread); `swap(state)` installs a
    `ServingState`. `state` is the one served now."""
    task_name = "model-reloader"

    def __init__(self, poll: Callable[[], Mapping[str, Any]], load: Callable[[str, str], Any],
                 swap: Callable[[ServingState], None], interval_s: float, state: ServingState = ServingState()):
        self._poll, self._load, self._swap = poll, load, swap
        self.interval_s, self.state = interval_s, state
        self._lock = asyncio.Lock()
        self._counts = dict(polls=0, reloads=0, poll_failures=0, load_failures=0, experiment_failures=0)
        self.last_error: str | None = None
        self.loaded_at: float | None = time.time() if state.champion is not None else None

    @property
    def current(self) -> str | None:
        """The champion version served now."""
        return self.state.versions[CHAMPION]

    async def check(self, force: bool = False) -> dict[str, Any]:
        """Poll and load what moved (the champion also when `force`). Returns {"version" (the
        champion's), "previous", "changed", "seconds", "challenger", "holdback" (versions now served,
        None where none), "experiment"}; raises NoChampion when there is none, and re-raises a failed
        poll or champion load (counted, the old state kept) so an operator's reload sees why."""
        async with self._lock:
            self._counts["polls"] += 1
            try:
                polled = await asyncio.to_thread(self._poll)
            except Exception as exc:
                self._fail("poll_failures", f"registry poll failed: {type(exc).__name__}: {exc}")
                raise
            self.last_error = None  # it says what went wrong in the latest check
            if polled.get(CHAMPION) is None:
                raise NoChampion("the registry has no champion yet")
            old, started = self.state, time.perf_counter()
            experiment = self._experiment(polled)
            models: dict[str, Any] = {}
            for arm in ARMS:  # the champion first: it alone may fail the check
                models[arm] = await self._arm(arm, polled.get(arm), old, models, force and arm == CHAMPION)
            versions = {arm: polled.get(arm) for arm in ARMS}
            new = ServingState(champion=models[CHAMPION], challenger=models["challenger"],
                               holdback=models["holdback"], experiment=experiment, versions=versions)
            if not new.same_as(old):
                self._swap(new)  # one reference: requests in flight keep the state they started with
                self.state = new
            previous, version = old.versions[CHAMPION], new.versions[CHAMPION]
            if version != previous or force:
                self.loaded_at = time.time()
            seconds = round(time.perf_counter() - started, 3)
            return {"version": version, "previous": previous, "changed": version != previous, "seconds": seconds,
                    **{arm: new.versions[arm] for arm in ARMS if arm != CHAMPION},
                    "experiment": dict(polled.get("experiment") or {})}

    async def _arm(self, arm: str, version: str | None, old: ServingState, loaded: Mapping[str, Any],
                   force: bool) -> Any:
        """The models for `arm` at `version`: the ones served now if unchanged, another arm's if it
        has that version, else loaded. None for no version, or a non-champion arm that failed."""
        if version is None:
            return None
        if not force:
            for other in ARMS:  # already in memory (this arm's, or e.g. a holdback that was the champion)
                if old.versions[other] == version:
                    return old.models(other)
            for other, models in loaded.items():
                if models is not None and models.versions.get("model") == version:
                    return models
        try:
            models = await asyncio.to_thread(self._load, arm, version)
        except Exception as exc:
            self._fail("load_failures", f"loading {arm} v{version} failed: {type(exc).__name__}: {exc}")
            if arm == CHAMPION:
                raise
            return None  # its users get the champion; the next poll tries again
        self._counts["reloads"] += 1
        log.info("serving %s v%s (was %s)", arm, version, old.versions[arm])
        return models

    def _experiment(self, polled: Mapping[str, Any]) -> ExperimentConfig:
        """The experiment the registry asks for; all-champion when its tags were refused."""
        error = polled.get("experiment_error")
        try:
            if error is None:
                return ExperimentConfig.from_tags(polled.get("experiment") or {})
        except ValueError as exc:
            error = str(exc)
        self._fail("experiment_failures", f"experiment refused, everyone on the champion: {error}")
        return ExperimentConfig()

    def _fail(self, counter: str, message: str) -> None:
        self._counts[counter] += 1
        self.last_error = message
        log.warning("reload: %s; champion stays v%s", message, self.current)

    async def run(self) -> None:
        """Poll every `interval_s` until cancelled; failures are counted and the old state kept."""
        while True:
            try:
                await self.check()
            except NoChampion:
                pass
            except Exception:  # already counted and logged by check()
                pass
            await asyncio.sleep(self.interval_s)

    def stats(self) -> dict[str, float]:
        """Counters for the metrics endpoint, plus the served champion version (0 when none)."""
        try:
            version = float(self.current) if self.current is not None else 0.0
        except ValueError:
            version = -1.0
        return {**self._counts, "champion_version": version}
