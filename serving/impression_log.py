"""Scoring-time feature logging: every served item, with the exact vector the ranker scored.

For a sampled request, one `ImpressionServed` per shown item goes to the impressions topic: the
features (name → float, exactly as the funnel handed them over), the score, model versions,
experiment arm, position, request id and surface. The archiver lands them in the lake, where
training joins them to clicks by (request_id, item_id): the features a model trains on are then the
features it was served with, with no online/offline skew to reconstruct. A missing value (NaN to
the ranker) is logged as an absent key, since JSON has no NaN; read back as NaN, the vector is exact.

Sampling is by a hash of the request id, so a request is logged whole or not at all, and the same
request gets the same answer in every process.

Durability trade-off, chosen for latency: `submit()` never blocks the request. It puts the served
list on a bounded in-memory queue that one worker thread drains into the producer (acks=all,
idempotent, retried). So (1) a full queue drops the newest requests' impressions, counted in
`stats()["dropped"]`; (2) a crash loses what is queued and what the producer has not yet sent
(bounded by the queue and linger); (3) `close()` drains both. Losing a sample of impressions biases
nothing as long as drops are rare and counted; blocking the request on the broker would turn a
broker hiccup into a serving outage.
"""

from __future__ import annotations

import hashlib
import logging
import math
import queue
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from eightbox.ingest.schema import ImpressionServed

from .api_models import RecommendResponse

log = logging.getLogger(__name__)
_STOP = object()


def sampled(request_id: str, share: float) -> bool:
    """Whether a request's impressions are logged: a pure function of (request_id, share)."""
    if share >= 1.0:
        return True
    if share <= 0.0:
        return False
    digest = hashlib.blake2b(b"impressions\0" + request_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < share


def impressions_for(response: RecommendResponse, features: Sequence[Mapping[str, float]], surface: str,
                    served_at: datetime, teams: Sequence[str | None] | None = None) -> list[ImpressionServed]:
    """One event per item, in position order. `features[i]` is the vector the ranker scored for
    `response.items[i]` ({} for items no ranker scored: lower rungs), NaN values left out (`_present`);
    `teams[i]` the arm that contributed it to an interleaved list (None otherwise).
    Event ids are `<request_id>-<position>`, so a re-sent log is recognisably the same impression."""
    if len(features) != len(response.items):
        raise ValueError(f"{len(features)} feature vectors for {len(response.items)} items")
    teams = [None] * len(response.items) if teams is None else list(teams)
    if len(teams) != len(response.items):
        raise ValueError(f"{len(teams)} teams for {len(response.items)} items")
    ex = response.explanation
    return [
        ImpressionServed(
            event_id=f"{response.request_id}-{item.position}", event_time=served_at,
            request_id=response.request_id, user_id=response.user_id, item_id=item.item_id,
            position=item.position, surface=surface, model_versions=dict(ex.model_versions),
            experiment_arm=ex.experiment_arm, score=item.score, features=_present(vector), team=team,
        )
        for item, vector, team in zip(response.items, features, teams)
    ]


def _present(vector: Mapping[str, float]) -> dict[str, float]:
    """The vector as JSON can carry it: a missing value (NaN, as the ranker sees it) is an absent
    key — JSON has no NaN, and reading an absent feature back as NaN restores the exact vector.
    An infinite value is a bug upstream and is refused (the request's log counts as failed)."""
    out = {}
    for name, value in vector.items():
        value = float(value)
        if math.isnan(value):
            continue
        if math.isinf(value):
            raise ValueError(f"feature {name} is {value}: not a loggable value")
        out[name] = value
    return out


class ImpressionLogger:
    """Logs served lists off the request path. `publish(event)` is `EventProducer.publish` (or a
    fake); it is called from the logger's one worker thread. Start-up connects nothing."""

    def __init__(self, publish: Callable[[ImpressionServed], Any], sample_share: float = 1.0,
                 max_queue: int = 10_000, clock: Callable[[], datetime] | None = None):
        if not 0.0 <= sample_share <= 1.0:
            raise ValueError(f"sample_share must be in [0, 1], got {sample_share}")
        self._publish = publish
        self.sample_share = sample_share
        self._clock = clock or (lambda: datetime.now(timezone.utc))
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._lock = threading.Lock()
        self._counts = dict(requests=0, unsampled=0, dropped=0, published=0, failed=0)
        self._thread = threading.Thread(target=self._run, name="impression-logger", daemon=True)
        self._thread.start()

    def submit(self, response: RecommendResponse, features: Sequence[Mapping[str, float]], surface: str, *,
               teams: Sequence[str | None] | None = None, served_at: datetime | None = None) -> bool:
        """Queue one served list for logging; never blocks. False when unsampled or dropped.
        `served_at`: the request's own (trusted, simulated) time, else the logger's clock now."""
        with self._lock:
            self._counts["requests"] += 1
        if not sampled(response.request_id, self.sample_share):
            self._count("unsampled")
            return False
        try:  # the time it was served, not the time the worker gets to it
            self._queue.put_nowait((response, list(features), surface, served_at or self._clock(),
                                    None if teams is None else list(teams)))
        except queue.Full:
            self._count("dropped")
            return False
        return True

    __call__ = submit  # so the logger itself is a ServingDeps.log_impressions

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is _STOP:
                    return
                try:
                    events = impressions_for(*job)
                    for event in events:
                        self._publish(event)
                    self._count("published", len(events))
                except Exception:  # one bad list must not stop the logging of the rest
                    log.exception("impression logging failed for request %s", job[0].request_id)
                    self._count("failed")
            finally:
                self._queue.task_done()

    def drain(self) -> None:
        """Wait until everything queued so far has been handed to `publish`."""
        self._queue.join()

    def close(self) -> None:
        """Hand over everything queued, then stop the worker. The caller flushes the producer."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()

    def stats(self) -> dict[str, int]:
        """Counts since start (requests seen, unsampled, dropped, events published, failed lists)
        and the current queue depth, for the metrics endpoint."""
        with self._lock:
            return {**self._counts, "queued": self._queue.qsize()}
