"""A lake archiver as a supervised service: ``<venv python> -m eightbox.cli archive --heartbeat ...``,
one member of the `archiver_group` consumer group landing every topic in the lake (ingest/archiver.py).
The wall-clock loop needs it: monitoring, the ladder's evidence and retraining read the lake.

- prepare: the contract's topics exist (the consumer would otherwise wait for topics the broker never
  auto-creates); a stale heartbeat is removed.
- healthy: alive, and its heartbeat ``<run_dir>/archiver.heartbeat`` is fresh (deploy/periodic_service.py).

`eightbox up` runs it (`stack_services(with_loop=True)`); the demo does not: its loop archives in
process after each tick, so that each tick's events are in the lake before the ladder reads them.
"""

from __future__ import annotations

from pathlib import Path

from eightbox.settings import Settings

from .periodic_service import periodic_service, read_heartbeat
from .services import ServiceSpec, require_topics

NAME = "archiver"


def heartbeat_path(settings: Settings) -> Path:
    return settings.run_dir / "archiver.heartbeat"


def heartbeat(settings: Settings) -> dict | None:
    """The archiver's last heartbeat ({time, pid, archived}), or None."""
    return read_heartbeat(heartbeat_path(settings))


def archiver(settings: Settings) -> ServiceSpec:
    path = heartbeat_path(settings)
    return periodic_service(NAME, settings, path, "eightbox.cli", "archive", "--heartbeat", str(path),
                            prepare_first=lambda: require_topics(settings, NAME))
