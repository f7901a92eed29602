"""Reading the dead-letter topic back: what was refused, and why."""

from __future__ import annotations

from kafka import KafkaConsumer, TopicPartition

from eightbox.settings import Settings

from .producer import decode_dead_letter
from .schema import DEAD_LETTER


def read_dead_letters(settings: Settings, limit: int | None = None, timeout_ms: int = 2000) -> list[dict]:
    """Dead-letter records, the newest `limit` per partition (all when None), oldest first."""
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_servers, enable_auto_commit=False,
                             group_id=None, consumer_timeout_ms=timeout_ms)
    try:
        tps = [TopicPartition(DEAD_LETTER.name, p) for p in range(DEAD_LETTER.partitions)]
        consumer.assign(tps)
        ends = consumer.end_offsets(tps)
        for tp in tps:
            consumer.seek(tp, max(0, ends[tp] - limit) if limit else 0)
        wanted = sum(ends[tp] - consumer.position(tp) for tp in tps)
        records = []
        for msg in consumer:
            records.append((msg.timestamp, decode_dead_letter(msg.value)))
            if len(records) >= wanted:
                break
        return [r for _, r in sorted(records, key=lambda x: x[0])]
    finally:
        consumer.close()


def tail_dead_letters(settings: Settings, limit: int = 20) -> list[dict]:
    return read_dead_letters(settings, limit)[-limit:]
