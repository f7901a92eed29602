"""The serving API on the real broker: client events through /events land on their contract topic,
invalid ones on no topic at all, and every served impression lands on the impressions topic with
the exact features the ranker scored."""

from __future__ import annotations

import json
import time
import uuid
import warnings

import pytest
from kafka import KafkaConsumer

from eightbox.ingest.producer import EventProducer
from eightbox.ingest.schema import DEAD_LETTER, TOPICS
from eightbox.serving.app import ServingDeps, create_app
from eightbox.serving.impression_log import ImpressionLogger

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

# Values chosen to catch any rounding between the ranker and the log (float64 repr round-trips), and
# a missing value (NaN to the ranker), which travels as an absent key: JSON has no NaN.
FEATURES = [{"item_ctr_7d": 0.1 + 0.2, "uc_affinity_30d": 1 / 3, "item_age_days": 1e-12 * i, "creator_items": 53.0,
             "uc_clicks_30m": float("nan") if i == 1 else float(i)} for i in range(4)]


def read_until(settings, topic: str, want, timeout_s: float = 30.0) -> list[dict]:
    """Records of `topic` (from the start) until `want(records)` holds or the time is up."""
    consumer = KafkaConsumer(topic, bootstrap_servers=settings.kafka_servers, group_id=None,
                             auto_offset_reset="earliest", consumer_timeout_ms=1000)
    records, deadline = [], time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and not want(records):
            records += [json.loads(m.value) for m in consumer]
    finally:
        consumer.close()
    return records


@pytest.fixture
def api(stack, stack_settings):
    producer = EventProducer(stack_settings, source="serving")
    logger = ImpressionLogger(producer.publish, sample_share=1.0)

    async def recommend(user_id, k, context, request_id):
        items = [{"item_id": f"i{i}", "score": 0.9 - i / 10, "p_click": 0.3, "p_engaged": 0.1, "source": "two_tower",
                  "features": FEATURES[i]} for i in range(k)]
        return {"rung": "full", "items": items, "explanation": {
            "stages": [], "model_versions": {"ranker": "7"}, "experiment_arm": "challenger"}}

    def close():
        logger.close()
        producer.close()

    deps = ServingDeps(settings=stack_settings, recommend=recommend, publish=producer.publish,
                       log_impressions=logger, close=close, stats={"impressions": logger.stats})
    with TestClient(create_app(deps)) as client:
        yield client, producer, logger


def test_events_posted_to_the_api_land_on_their_topics_and_invalid_ones_nowhere(api, stack_settings):
    client, producer, _ = api
    tag = uuid.uuid4().hex[:8]
    user = f"api-{tag}"
    click = {"event_type": "item_clicked", "event_id": f"{tag}-click", "event_time": "2026-11-20T10:00:00Z",
             "user_id": user, "item_id": "i1", "request_id": "r1", "position": 0, "surface": "home",
             "client": {"ip": "10.1.2.3"}}
    liked = {"event_type": "item_engaged", "event_id": f"{tag}-like", "event_time": "2026-11-20T10:05:00Z",
             "user_id": user, "item_id": "i1", "kind": "like", "request_id": "r1"}
    r = client.post("/events", json=[click, liked])
    assert r.status_code == 202 and r.json() == {"accepted": 2, "event_ids": [f"{tag}-click", f"{tag}-like"]}

    sent_before = producer.sent
    poisoned = [{**click, "event_id": f"{tag}-never"}, {**click, "event_id": f"{tag}-bad", "position": "third"}]
    refused = client.post("/events", json=poisoned)
    assert refused.status_code == 422 and "position" in refused.json()["message"]
    assert producer.sent == sent_before, "a batch with one bad event sends nothing"
    # Same user, so the same partition: had `-never` been sent, it would come before this sentinel.
    assert client.post("/events", json={**click, "event_id": f"{tag}-sentinel"}).status_code == 202

    ids = lambda recs: {r["event_id"] for r in recs}  # noqa: E731
    clicks = read_until(stack_settings, TOPICS["item_clicked"].name, lambda recs: f"{tag}-sentinel" in ids(recs))
    ours = [r for r in clicks if r["user_id"] == user]
    assert [r["event_id"] for r in ours] == [f"{tag}-click", f"{tag}-sentinel"]
    assert ours[0]["client"]["ip"].startswith("pii_"), "pseudonymized by the same gateway as ingest"
    engaged = read_until(stack_settings, TOPICS["item_engaged"].name, lambda recs: f"{tag}-like" in ids(recs))
    assert f"{tag}-like" in ids(engaged)
    letters = read_until(stack_settings, DEAD_LETTER.name, lambda recs: False, timeout_s=2)
    assert not any(tag in json.dumps(letter) for letter in letters), "refused at the API, not dead-lettered"


def test_served_impressions_land_on_the_impressions_topic_with_the_features_the_ranker_scored(api, stack_settings):
    client, producer, logger = api
    r = client.post("/recommend", json={"user_id": "imp-user", "k": 4, "context": {"surface": "item_page"}})
    assert r.status_code == 200
    request_id = r.json()["request_id"]
    logger.drain()
    producer.flush(30)

    def ours(recs):
        return [x for x in recs if x.get("request_id") == request_id]

    logged = ours(read_until(stack_settings, TOPICS["impression_served"].name, lambda recs: len(ours(recs)) == 4))
    assert sorted(x["position"] for x in logged) == [0, 1, 2, 3]
    for record in logged:
        i = record["position"]
        assert record["item_id"] == f"i{i}" and record["surface"] == "item_page"
        present = {name: v for name, v in FEATURES[i].items() if v == v}  # NaN != NaN
        assert record["features"] == present, "the exact floats the ranker saw, not a rounding of them"
        assert ("uc_clicks_30m" in record["features"]) == (i != 1)
        assert record["score"] == r.json()["items"][i]["score"]
        assert record["model_versions"] == {"ranker": "7"} and record["experiment_arm"] == "challenger"
        assert record["event_id"] == f"{request_id}-{i}" and record["user_id"] == "imp-user"
    assert logger.stats() | {"queued": 0} == {"requests": 1, "unsampled": 0, "dropped": 0, "published": 4,
                                              "failed": 0, "queued": 0}
    assert "eightbox_impressions_published 4.0" in client.get("/metrics").text
