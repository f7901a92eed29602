"""The ingestion gateway: validate, pseudonymize, and produce events to Kafka.

Valid events go to their contract topic keyed by partition key (user_id for user events, so one
user's events stay in order); invalid input goes to the dead-letter topic with the reason and the
original bytes (personal data scrubbed), and never stops the caller. Sends are acks=all and
idempotent, so broker retries neither lose nor duplicate; a failed send is raised at `flush`.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from typing import Callable

from kafka import KafkaProducer

from eightbox.settings import Settings

from .pseudonymize import Pseudonymizer
from .schema import DEAD_LETTER, InvalidEvent, _Event, parse_event, to_wire, topic_for

DEAD_LETTER_KEEP_BYTES = 256 * 1024  # the rest of an oversize payload is cut, and flagged


class DeliveryError(RuntimeError):
    """Some sends were not acknowledged by the broker; `event_ids` names them."""

    def __init__(self, event_ids: list[str], cause: BaseException):
        super().__init__(f"{len(event_ids)} event(s) not acknowledged, e.g. {event_ids[:3]}: {cause}")
        self.event_ids = event_ids


def kafka_producer(settings: Settings, **overrides) -> KafkaProducer:
    config = dict(
        bootstrap_servers=settings.kafka_servers,
        acks="all",
        enable_idempotence=True,  # with acks=all: broker-side dedupe of retried batches
        retries=2**31 - 1,
        max_in_flight_requests_per_connection=5,
        delivery_timeout_ms=120_000,
        linger_ms=10,
        batch_size=256 * 1024,
        compression_type="lz4",
        client_id="eightbox-ingest",
    )
    config.update(overrides)
    return KafkaProducer(**config)


class EventProducer:
    """Thread-safe. `on_ack(event_id)` is called for each event the broker acknowledged."""

    def __init__(self, settings: Settings, producer: KafkaProducer | None = None,
                 on_ack: Callable[[str], None] | None = None, source: str = "ingest"):
        self.settings = settings
        self._producer = producer or kafka_producer(settings)
        self._pseudo = Pseudonymizer(settings.pii_key.get_secret_value())
        self._on_ack = on_ack
        self._source = source
        self._failed: list[str] = []
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self.sent = 0
        self.dead_lettered = 0

    def publish(self, raw: bytes | str | dict | _Event):
        """Route one event: valid to its topic, invalid to the dead-letter topic. Returns the send future."""
        if isinstance(raw, _Event):
            event = raw
        else:
            try:
                event = parse_event(raw, self.settings.max_event_bytes)
            except InvalidEvent as e:
                return self.dead_letter(raw, e.reason)
        event = self._pseudo.apply(event)
        future = self._producer.send(topic_for(event).name, key=event.key.encode(), value=to_wire(event))
        self.sent += 1
        future.add_callback(self._acked, event.event_id)
        future.add_errback(self._failed_send, event.event_id)
        return future

    def dead_letter(self, raw: bytes | str | dict, reason: str):
        """Set bad input aside with why. Personal data in it is tokenized like everywhere else, so a
        JSON payload is kept re-serialized rather than byte for byte."""
        original = raw if isinstance(raw, bytes) else (
            raw.encode() if isinstance(raw, str) else json.dumps(raw, default=str).encode())
        original = self._pseudo.scrub_payload(original[:DEAD_LETTER_KEEP_BYTES])
        record = {
            "reason": self._pseudo.scrub_text(reason),
            "original_b64": base64.b64encode(original).decode(),
            "original_size": len(raw) if isinstance(raw, (bytes, str)) else None,
            "truncated": isinstance(raw, (bytes, str)) and len(raw) > DEAD_LETTER_KEEP_BYTES,
            "source": self._source,
            "received_at": time.time(),
        }
        self.dead_lettered += 1
        future = self._producer.send(DEAD_LETTER.name, value=json.dumps(record).encode())
        future.add_errback(self._failed_send, "dead-letter")
        return future

    def _acked(self, event_id: str, _metadata) -> None:  # kafka-python passes bound args first
        if self._on_ack:
            self._on_ack(event_id)

    def _failed_send(self, event_id: str, exc: BaseException) -> None:
        with self._lock:
            self._failed.append(event_id)
            self._error = exc

    def flush(self, timeout: float | None = None) -> None:
        """Wait for every send; raise DeliveryError naming the events the broker did not take."""
        self._producer.flush(timeout)
        with self._lock:
            failed, error, self._failed, self._error = self._failed, self._error, [], None
        if failed:
            raise DeliveryError(failed, error)  # type: ignore[arg-type]

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._producer.close()

    def __enter__(self) -> "EventProducer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def decode_dead_letter(value: bytes) -> dict:
    """A dead-letter record with its original bytes decoded (for inspection and tests)."""
    record = json.loads(value)
    record["original"] = base64.b64decode(record.pop("original_b64"))
    return record
