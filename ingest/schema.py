"""The event contract: every event type, topic and partition count, defined once.

Producers, the archiver, the simulator, the MovieLens loader, Flink, Spark and serving all import
their names from here. Events are named in the past tense; each carries a unique ``event_id``, an
``event_time`` (timezone-aware, UTC on the wire) and a ``schema_version``.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from dataclasses import dataclass
from typing import Annotated, Literal, Union

import orjson
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

SCHEMA_VERSION = 1

EngagementKind = Literal["like", "purchase", "watch", "rate"]


@dataclass(frozen=True)
class Topic:
    name: str
    partitions: int


class Client(BaseModel):
    """Where a client event came from. `ip` and `device_id` are personal data: pseudonymized
    at ingestion, so only keyed hashes ever reach a topic or the lake."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    ip: str | None = None
    device_id: str | None = None
    user_agent: str | None = Field(default=None, max_length=512)


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: str = Field(default_factory=lambda: uuid.uuid4().hex, min_length=1, max_length=128)
    event_time: AwareDatetime
    schema_version: int = SCHEMA_VERSION
    client: Client | None = None

    @field_validator("event_time")
    @classmethod
    def _to_utc(cls, value: datetime) -> datetime:
        return value.astimezone(timezone.utc)  # one zone on the wire and in the lake

    @property
    def key(self) -> str:
        """Partition key: events of one user stay in order on one partition."""
        return self.user_id  # type: ignore[attr-defined]


class ImpressionServed(_Event):
    """One item shown at one position, with exactly what the ranker saw when it scored it."""

    event_type: Literal["impression_served"] = "impression_served"
    request_id: str
    user_id: str
    item_id: str
    position: int = Field(ge=0)
    surface: str
    model_versions: dict[str, str] = Field(default_factory=dict)
    experiment_arm: str = "control"
    features: dict[str, float] = Field(default_factory=dict)
    score: float | None = None
    # Interleaved lists only: the arm whose ranking contributed this item ("champion" or "challenger");
    # a click on it credits that arm (team-draft interleaving).
    team: str | None = Field(default=None, max_length=64)


class ItemClicked(_Event):
    event_type: Literal["item_clicked"] = "item_clicked"
    user_id: str
    item_id: str
    request_id: str | None = None
    position: int | None = Field(default=None, ge=0)
    surface: str | None = None


class ItemEngaged(_Event):
    """A deeper signal than a click, often arriving minutes to hours after it (label delay)."""

    event_type: Literal["item_engaged"] = "item_engaged"
    user_id: str
    item_id: str
    kind: EngagementKind
    value: float = 1.0
    request_id: str | None = None


class UserSignedUp(_Event):
    event_type: Literal["user_signed_up"] = "user_signed_up"
    user_id: str
    email: str | None = None
    country: str | None = None
    attributes: dict[str, str] = Field(default_factory=dict)


class ItemPublished(_Event):
    event_type: Literal["item_published"] = "item_published"
    item_id: str
    creator_id: str
    category: str
    title: str = Field(default="", max_length=1024)
    description: str = Field(default="", max_length=8192)
    tags: list[str] = Field(default_factory=list, max_length=64)
    content_vector: list[float] = Field(default_factory=list, max_length=1024)

    @property
    def key(self) -> str:
        return self.item_id


class ShadowScored(_Event):
    """What the challenger would have shown on a request the champion answered (shadow scoring),
    beside what the champion showed. Never an impression: nobody saw the challenger's list, so it must
    not count as shown nor become training data; monitoring compares the two score distributions."""

    event_type: Literal["shadow_scored"] = "shadow_scored"
    request_id: str
    user_id: str
    champion_version: str
    challenger_version: str
    champion_item_ids: list[str] = Field(default_factory=list, max_length=1000)
    champion_scores: list[float | None] = Field(default_factory=list, max_length=1000)  # None: no ranker score
    challenger_item_ids: list[str] = Field(default_factory=list, max_length=1000)
    challenger_scores: list[float | None] = Field(default_factory=list, max_length=1000)
    champion_rung: str = "full"
    challenger_rung: str = "full"
    champion_latency_ms: float = Field(ge=0.0)
    challenger_latency_ms: float = Field(ge=0.0)


Event = Annotated[
    Union[ImpressionServed, ItemClicked, ItemEngaged, UserSignedUp, ItemPublished, ShadowScored],
    Field(discriminator="event_type"),
]
EVENT_TYPES: dict[str, type[_Event]] = {
    cls.model_fields["event_type"].default: cls
    for cls in (ImpressionServed, ItemClicked, ItemEngaged, UserSignedUp, ItemPublished, ShadowScored)
}

# Topic names and partition counts: the only place they are written down.
TOPICS: dict[str, Topic] = {
    "impression_served": Topic("eightbox.impressions", 6),
    "item_clicked": Topic("eightbox.clicks", 6),
    "item_engaged": Topic("eightbox.engagements", 6),
    "user_signed_up": Topic("eightbox.users", 3),
    "item_published": Topic("eightbox.items", 3),
    "shadow_scored": Topic("eightbox.shadow-scores", 3),
}
DEAD_LETTER = Topic("eightbox.dead-letter", 3)
# Produced by the Flink job: windowed feature values on their way to Feast, and events that came
# later than the allowed lateness (counted and archived, never silently dropped).
FEATURE_UPDATES = Topic("eightbox.feature-updates", 6)
LATE_EVENTS = Topic("eightbox.late-events", 3)
ALL_TOPICS: tuple[Topic, ...] = (*TOPICS.values(), DEAD_LETTER, FEATURE_UPDATES, LATE_EVENTS)
EVENT_TYPE_OF_TOPIC: dict[str, str] = {t.name: et for et, t in TOPICS.items()}

_ADAPTER: TypeAdapter = TypeAdapter(Event)


class InvalidEvent(ValueError):
    """An event that breaks the contract; `reason` says how, in one line."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _reason(err: ValidationError) -> str:
    parts = []
    for e in err.errors()[:5]:
        where = ".".join(str(p) for p in e["loc"]) or "event"
        parts.append(f"{where}: {e['msg']}")
    return "; ".join(parts)


def parse_event(raw: bytes | str | dict, max_bytes: int | None = None) -> _Event:
    """Validate one event from wire bytes, a JSON string or a dict; raises InvalidEvent."""
    if isinstance(raw, (bytes, str)):
        size = len(raw.encode() if isinstance(raw, str) else raw)
        if max_bytes is not None and size > max_bytes:
            raise InvalidEvent(f"oversize: {size} bytes > limit {max_bytes}")
        try:
            raw = orjson.loads(raw)
        except ValueError as e:
            raise InvalidEvent(f"not JSON: {e}") from None
    if not isinstance(raw, dict):
        raise InvalidEvent(f"not a JSON object: got {type(raw).__name__}")
    kind = raw.get("event_type")
    if not isinstance(kind, str) or kind not in EVENT_TYPES:
        raise InvalidEvent(f"event_type: unknown or missing ({kind!r}); expected one of {sorted(EVENT_TYPES)}")
    version = raw.get("schema_version", SCHEMA_VERSION)
    if type(version) is not int or version != SCHEMA_VERSION:
        raise InvalidEvent(f"schema_version: {raw.get('schema_version')!r} is not supported (want {SCHEMA_VERSION})")
    try:
        return _ADAPTER.validate_python(raw)
    except ValidationError as e:
        raise InvalidEvent(_reason(e)) from None


def to_wire(event: _Event) -> bytes:
    """Canonical JSON bytes for a topic: UTC timestamps, no absent optional noise."""
    return event.model_dump_json(exclude_none=True).encode()


def topic_for(event: _Event) -> Topic:
    return TOPICS[event.event_type]  # type: ignore[attr-defined]

