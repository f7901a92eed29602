"""Shadow scoring: run the challenger on requests the champion answered, show none of it, publish it.

Off the request path: `submit` only schedules a task on the running loop, which starts once the
request handler yields, i.e. after its response is built. At most `max_in_flight` shadow runs go at
once; beyond that a request's shadow run is dropped and counted (`stats()["dropped"]`): shadow work
must never queue up behind, or slow down, the traffic it shadows.

What the challenger would have shown goes out as one `ShadowScored` event (topic
``eightbox.shadow-scores``) beside what the champion showed: top-k ids and scores of both, both
latencies. Never as `ImpressionServed`: nobody saw it, so it must not count as shown, nor become a
training example. Monitoring compares the two score distributions from these events.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any

from eightbox.ingest.schema import ShadowScored

from .experiments import CHALLENGER

log = logging.getLogger(__name__)


def shadow_event(served: Any, shadow: Any, event_time: datetime) -> ShadowScored:
    """The event for one request from the champion's and the challenger's `Recommendation`s."""
    return ShadowScored(
        event_id=f"{served.request_id}-shadow", event_time=event_time, request_id=served.request_id,
        user_id=served.user_id, champion_version=served.model_versions.get("model", ""),
        challenger_version=shadow.model_versions.get("model", ""),
        champion_item_ids=[c.item_id for c in served.items], champion_scores=[c.score for c in served.items],
        challenger_item_ids=[c.item_id for c in shadow.items], challenger_scores=[c.score for c in shadow.items],
        champion_rung=served.rung, challenger_rung=shadow.rung,
        champion_latency_ms=served.latency_ms, challenger_latency_ms=shadow.latency_ms)


class ShadowScorer:
    """`funnel.recommend(..., models=, arm=)` scores; `publish(event)` is `EventProducer.publish`
    (called in a worker thread: it may block on broker metadata). `clock` stamps events unless the
    request carried a trusted ``request_time``."""

    def __init__(self, funnel: Any, publish: Callable[[ShadowScored], Any], max_in_flight: int = 4,
                 clock: Callable[[], datetime] | None = None):
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        self.funnel, self._publish, self.max_in_flight = funnel, publish, max_in_flight
        self._clock = clock or (lambda: datetime.now(timezone.utc))
        self._tasks: set[asyncio.Task] = set()
        self._lock = threading.Lock()
        self._counts = dict(submitted=0, dropped=0, published=0, failed=0)

    def submit(self, served: Any, challenger: Any, k: int, context: Mapping[str, Any]) -> bool:
        """Schedule the challenger's run for the request `served` answered; never blocks. False when
        dropped (too many in flight). Call from the event loop's thread."""
        self._count("submitted")
        if len(self._tasks) >= self.max_in_flight:
            self._count("dropped")
            return False
        event_time = context.get("request_time") or self._clock()
        task = asyncio.get_running_loop().create_task(self._score(served, challenger, k, dict(context), event_time))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _score(self, served: Any, challenger: Any, k: int, context: dict, event_time: datetime) -> None:
        try:
            shadow = await self.funnel.recommend(served.user_id, k, context, served.request_id, models=challenger,
                                                 arm=CHALLENGER)
            await asyncio.to_thread(self._publish, shadow_event(served, shadow, event_time))
            self._count("published")
        except Exception:  # shadow work must never surface: count it and go on
            log.exception("shadow scoring failed for request %s", served.request_id)
            self._count("failed")

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    async def drain(self) -> None:
        """Wait for the shadow runs in flight (at shutdown, before the producer is flushed)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def stats(self) -> dict[str, float]:
        """Counts since start (submitted, dropped when busy, published, failed) and runs in flight."""
        with self._lock:
            return {**self._counts, "in_flight": len(self._tasks)}
