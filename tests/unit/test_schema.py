"""The event contract (ingest/schema.py): parsing, the wire format, reasons for rejection, topics."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from eightbox.ingest.schema import (
    ALL_TOPICS,
    DEAD_LETTER,
    EVENT_TYPE_OF_TOPIC,
    EVENT_TYPES,
    SCHEMA_VERSION,
    TOPICS,
    Client,
    ImpressionServed,
    InvalidEvent,
    ItemClicked,
    ItemEngaged,
    ItemPublished,
    UserSignedUp,
    parse_event,
    to_wire,
    topic_for,
)

T0 = "2026-11-26T10:00:00Z"

# One complete, valid wire dict per event type (optional fields filled, so they round-trip too).
EXAMPLES: dict[str, dict] = {
    "impression_served": {
        "event_type": "impression_served", "event_time": T0, "request_id": "r1", "user_id": "u1",
        "item_id": "i1", "position": 3, "surface": "home", "model_versions": {"ranker": "7"},
        "experiment_arm": "interleaved", "features": {"ctr": 0.25}, "score": 0.9, "team": "challenger",
        "client": {"ip": "pii_ab", "device_id": "pii_cd", "user_agent": "curl/8"},
    },
    "item_clicked": {
        "event_type": "item_clicked", "event_time": T0, "user_id": "u1", "item_id": "i1",
        "request_id": "r1", "position": 0, "surface": "home",
    },
    "item_engaged": {
        "event_type": "item_engaged", "event_time": T0, "user_id": "u1", "item_id": "i1",
        "kind": "rate", "value": 4.5, "request_id": "r1",
    },
    "user_signed_up": {
        "event_type": "user_signed_up", "event_time": T0, "user_id": "u1", "email": "pii_ef",
        "country": "DE", "attributes": {"plan": "free"},
    },
    "item_published": {
        "event_type": "item_published", "event_time": T0, "item_id": "i1", "creator_id": "c1",
        "category": "film", "title": "Heat", "description": "A heist.", "tags": ["crime"],
        "content_vector": [0.5, -1.0],
    },
    "shadow_scored": {
        "event_type": "shadow_scored", "event_time": T0, "request_id": "r1", "user_id": "u1",
        "champion_version": "3", "challenger_version": "4", "champion_item_ids": ["i1", "i2"],
        "champion_scores": [0.5, 0.25], "challenger_item_ids": ["i2", "i9"], "challenger_scores": [0.75, None],
        "champion_rung": "full", "challenger_rung": "fallback", "champion_latency_ms": 12.5,
        "challenger_latency_ms": 14.0,
    },
}


def example(event_type: str, /, **changes) -> dict:
    raw = {"event_id": f"e-{event_type}", **json.loads(json.dumps(EXAMPLES[event_type]))}  # a deep copy
    raw.update(changes)
    return {k: v for k, v in raw.items() if v is not ...}


def reason_of(raw, **kwargs) -> str:
    with pytest.raises(InvalidEvent) as info:
        parse_event(raw, **kwargs)
    reason = info.value.reason
    assert reason and "\n" not in reason, f"reason is not one line: {reason!r}"
    assert str(info.value) == reason
    return reason


def test_the_examples_cover_every_event_type():
    assert set(EXAMPLES) == set(EVENT_TYPES)


@pytest.mark.parametrize("event_type", sorted(EVENT_TYPES))
def test_each_event_type_parses_from_a_dict_a_json_string_and_bytes(event_type):
    raw = example(event_type)
    from_dict = parse_event(raw)
    assert isinstance(from_dict, EVENT_TYPES[event_type])
    assert from_dict.event_type == event_type and from_dict.event_id == f"e-{event_type}"
    assert from_dict.schema_version == SCHEMA_VERSION
    assert parse_event(json.dumps(raw)) == from_dict
    assert parse_event(json.dumps(raw).encode()) == from_dict


@pytest.mark.parametrize("event_type", sorted(EVENT_TYPES))
def test_each_event_type_round_trips_through_the_wire(event_type):
    event = parse_event(example(event_type))
    wire = to_wire(event)
    assert isinstance(wire, bytes)
    assert parse_event(wire) == event
    assert to_wire(parse_event(wire)) == wire  # the wire form is canonical


def test_absent_optional_fields_are_left_off_the_wire_and_come_back_as_none():
    event = ItemClicked(event_time=datetime(2026, 1, 1, tzinfo=timezone.utc), user_id="u", item_id="i")
    wire = json.loads(to_wire(event))
    assert not {"request_id", "position", "surface", "client"} & set(wire)
    assert parse_event(to_wire(event)) == event


def test_a_missing_required_field_is_named_in_the_reason():
    reason = reason_of(example("item_clicked", user_id=...))
    assert "user_id" in reason and "required" in reason.lower()


def test_a_wrongly_typed_field_is_named_in_the_reason():
    reason = reason_of(example("impression_served", position="third"))
    assert "position" in reason and "integer" in reason


def test_an_unparseable_timestamp_is_rejected_with_a_reason_naming_event_time():
    assert "event_time" in reason_of(example("item_engaged", event_time="yesterday at noon"))


def test_a_timestamp_without_a_timezone_is_rejected():
    reason = reason_of(example("item_clicked", event_time="2026-11-26T10:00:00"))
    assert "event_time" in reason and "timezone" in reason


@pytest.mark.parametrize("kind", ["page_viewed", None, 7])
def test_an_unknown_or_missing_event_type_is_rejected_listing_the_known_ones(kind):
    raw = example("item_clicked", event_type=kind if kind is not None else ...)
    reason = reason_of(raw)
    assert reason.startswith("event_type:") and "item_clicked" in reason


@pytest.mark.parametrize("kind", [["item_clicked"], {"a": 1}])
def test_an_unhashable_event_type_is_rejected_as_invalid(kind):
    assert reason_of(example("item_clicked", event_type=kind)).startswith("event_type:")


@pytest.mark.parametrize("version", [0, 2, "1"])
def test_an_unsupported_schema_version_is_rejected(version):
    reason = reason_of(example("item_clicked", schema_version=version))
    assert reason.startswith("schema_version:") and "not supported" in reason


def test_a_payload_over_max_bytes_is_rejected_before_parsing():
    wire = json.dumps(example("item_published", description="x" * 500)).encode()
    reason = reason_of(wire, max_bytes=100)
    assert "oversize" in reason and str(len(wire)) in reason and "100" in reason
    assert parse_event(wire, max_bytes=len(wire)).event_type == "item_published"  # the limit is inclusive
    assert "oversize" in reason_of(b"{not json" + b" " * 200, max_bytes=100)  # size is checked first


def test_bytes_that_are_not_json_are_rejected():
    assert reason_of(b"event_type=item_clicked").startswith("not JSON")


def test_bytes_that_are_not_valid_utf8_are_rejected():
    assert reason_of(b'{"event_type": "item_clicked", "user_id": "\xc3\x28"}').startswith("not JSON")


def test_a_json_array_is_rejected_as_not_an_object():
    reason = reason_of(json.dumps([example("item_clicked")]))
    assert "not a JSON object" in reason and "list" in reason


def test_a_negative_position_is_rejected():
    for event_type in ("impression_served", "item_clicked"):
        reason = reason_of(example(event_type, position=-1))
        assert "position" in reason and "greater than or equal to 0" in reason


def test_unknown_fields_are_rejected():
    assert "surprise" in reason_of(example("item_clicked", surprise=1))


def test_an_event_time_with_an_offset_is_normalized_to_utc_on_the_wire():
    event = parse_event(example("item_clicked", event_time="2026-11-26T10:00:00+01:00"))
    assert event.event_time == datetime(2026, 11, 26, 9, tzinfo=timezone.utc)
    assert event.event_time.utcoffset() == timedelta(0)
    assert json.loads(to_wire(event))["event_time"] == "2026-11-26T09:00:00Z"


def test_an_event_time_constructed_in_another_zone_is_stored_in_utc():
    local = datetime(2026, 6, 1, 2, 30, tzinfo=timezone(timedelta(hours=-5)))
    event = ItemEngaged(event_time=local, user_id="u", item_id="i", kind="like")
    assert event.event_time.tzinfo == timezone.utc and event.event_time.hour == 7


def test_every_event_type_has_exactly_one_topic():
    assert set(TOPICS) == set(EVENT_TYPES)
    assert EVENT_TYPE_OF_TOPIC == {t.name: et for et, t in TOPICS.items()}
    for event_type in EVENT_TYPES:
        assert topic_for(parse_event(example(event_type))) is TOPICS[event_type]


def test_topic_names_are_unique_partitions_positive_and_the_dead_letter_topic_distinct():
    names = [t.name for t in ALL_TOPICS]
    assert len(names) == len(set(names)) == len(TOPICS) + 3  # + dead letters, feature updates, late events
    assert all(t.partitions > 0 for t in ALL_TOPICS)
    assert DEAD_LETTER in ALL_TOPICS and DEAD_LETTER.name not in EVENT_TYPE_OF_TOPIC


@pytest.mark.parametrize("event_type", sorted(EVENT_TYPES))
def test_the_partition_key_is_the_user_except_for_published_items(event_type):
    event = parse_event(example(event_type))
    expected = event.item_id if event_type == "item_published" else event.user_id
    assert event.key == expected


def test_published_items_are_keyed_by_item_not_creator():
    event = ItemPublished(event_time=datetime.now(timezone.utc), item_id="i9", creator_id="c1", category="x")
    assert event.key == "i9"


def test_default_event_ids_are_unique_and_non_empty():
    now = datetime.now(timezone.utc)
    ids = {UserSignedUp(event_time=now, user_id="u").event_id for _ in range(1000)}
    assert len(ids) == 1000 and all(ids)


def test_events_and_clients_are_immutable():
    event = ImpressionServed(event_time=datetime.now(timezone.utc), request_id="r", user_id="u",
                             item_id="i", position=0, surface="s", client=Client(ip="x"))
    with pytest.raises(Exception):
        event.user_id = "other"  # type: ignore[misc]
    with pytest.raises(Exception):
        event.client.ip = "y"  # type: ignore[union-attr]
