"""Creates the contract's topics on the broker (idempotent): names and partition counts come
from ingest/schema.py, so no client ever relies on auto-creation."""

from __future__ import annotations

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from eightbox.settings import Settings

from .schema import ALL_TOPICS


def ensure_topics(settings: Settings, replication: int = 1) -> list[str]:
    """Create whichever contract topics are missing; returns the names created."""
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_servers, client_id="eightbox-admin")
    try:
        existing = set(admin.list_topics())
        missing = [NewTopic(t.name, t.partitions, replication) for t in ALL_TOPICS if t.name not in existing]
        if missing:
            try:
                admin.create_topics(missing)
            except TopicAlreadyExistsError:  # another process won the race: same outcome
                pass
        return [t.name for t in missing]
    finally:
        admin.close()
