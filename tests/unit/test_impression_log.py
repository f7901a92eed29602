"""Scoring-time feature logging (serving/impression_log.py): what is logged, how it is sampled, and
that the request never waits for it."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone

import pytest

from eightbox.ingest.schema import parse_event, to_wire
from eightbox.serving.api_models import RecommendResponse
from eightbox.serving.impression_log import ImpressionLogger, impressions_for, sampled

SERVED_AT = datetime(2026, 11, 20, 10, 0, tzinfo=timezone.utc)


def served(request_id: str = "r1", n: int = 3) -> RecommendResponse:
    return RecommendResponse.model_validate({
        "request_id": request_id, "user_id": "u1", "rung": "full",
        "items": [{"item_id": f"i{i}", "score": 0.5 - i / 10, "position": i, "source": "trending"} for i in range(n)],
        "explanation": {"model_versions": {"ranker": "7"}, "experiment_arm": "challenger"}})


def test_one_impression_per_item_carrying_exactly_the_vector_the_ranker_scored():
    import numpy as np

    vectors = [{"ctr": 0.1 + 0.2, "age": float(np.float32(1 / 3))}, {"ctr": np.float32(0.25)}, {}]
    events = impressions_for(served(), vectors, "home", SERVED_AT)
    assert [(e.item_id, e.position, e.event_id) for e in events] == [("i0", 0, "r1-0"), ("i1", 1, "r1-1"),
                                                                      ("i2", 2, "r1-2")]
    assert events[0].features == {"ctr": 0.30000000000000004, "age": float(np.float32(1 / 3))}
    assert events[1].features == {"ctr": 0.25} and events[2].features == {}
    assert {(e.surface, e.experiment_arm, e.model_versions["ranker"], e.event_time) for e in events} == {
        ("home", "challenger", "7", SERVED_AT)}
    wire = parse_event(to_wire(events[0]))  # the contract round trip loses no bit of a feature
    assert wire.features == events[0].features and wire.score == 0.5


def test_a_missing_feature_nan_to_the_ranker_is_logged_as_an_absent_key_and_infinity_is_refused():
    (event,) = impressions_for(served(n=1), [{"ctr": float("nan"), "age": 2.0}], "home", SERVED_AT)
    assert event.features == {"age": 2.0}
    assert parse_event(to_wire(event)).features == {"age": 2.0}, "valid on the wire: JSON has no NaN"
    with pytest.raises(ValueError, match="ctr is inf"):
        impressions_for(served(n=1), [{"ctr": float("inf")}], "home", SERVED_AT)


def test_a_feature_list_that_does_not_match_the_items_is_refused():
    with pytest.raises(ValueError, match="2 feature vectors for 3 items"):
        impressions_for(served(), [{}, {}], "home", SERVED_AT)


def test_sampling_is_a_pure_function_of_the_request_id_and_holds_its_share():
    ids = [f"r{i:06d}" for i in range(20_000)]
    picked = [sampled(r, 0.3) for r in ids]
    assert picked == [sampled(r, 0.3) for r in ids]
    assert abs(sum(picked) / len(ids) - 0.3) < 0.015
    assert all(sampled(r, 1.0) for r in ids[:100]) and not any(sampled(r, 0.0) for r in ids[:100])
    assert {r for r, p in zip(ids, picked) if p} <= {r for r in ids if sampled(r, 0.5)}, "a larger share adds requests"


def test_the_logger_publishes_off_the_request_thread_and_close_drains_it():
    published, threads = [], set()

    def publish(event):
        threads.add(threading.current_thread().name)
        published.append(event)

    logger = ImpressionLogger(publish, clock=lambda: SERVED_AT)
    assert logger.submit(served("ra"), [{}] * 3, "home") and logger(served("rb", 2), [{}] * 2, "home")
    logger.close()
    assert [e.event_id for e in published] == ["ra-0", "ra-1", "ra-2", "rb-0", "rb-1"]
    assert threads == {"impression-logger"}
    assert logger.stats() == {"requests": 2, "unsampled": 0, "dropped": 0, "published": 5, "failed": 0, "queued": 0}


def test_a_stuck_broker_never_blocks_a_request_the_excess_is_dropped_and_counted():
    release = threading.Event()
    logger = ImpressionLogger(lambda event: release.wait(), max_queue=2)
    started = time.perf_counter()
    results = [logger.submit(served(f"r{i}", 1), [{}], "home") for i in range(10)]
    elapsed = time.perf_counter() - started
    release.set()
    logger.close()
    assert elapsed < 0.5 and results[:2] == [True, True] and results.count(True) <= 3
    stats = logger.stats()
    assert stats["dropped"] == results.count(False) and stats["published"] == results.count(True)


def test_a_failing_publish_is_counted_and_logging_goes_on():
    calls = []

    def publish(event):
        calls.append(event.request_id)
        if event.request_id == "bad":
            raise RuntimeError("broker said no")

    logger = ImpressionLogger(publish)
    logger.submit(served("bad", 1), [{}], "home")
    logger.submit(served("good", 1), [{}], "home")
    logger.close()
    assert calls == ["bad", "good"] and logger.stats()["failed"] == 1 and logger.stats()["published"] == 1


def test_unsampled_requests_are_not_queued():
    logger = ImpressionLogger(lambda e: None, sample_share=0.0)
    assert logger.submit(served(), [{}] * 3, "home") is False
    logger.close()
    assert logger.stats()["unsampled"] == 1 and logger.stats()["published"] == 0
    with pytest.raises(ValueError, match="sample_share"):
        ImpressionLogger(lambda e: None, sample_share=1.5)
