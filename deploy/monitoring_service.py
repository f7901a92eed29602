"""The monitoring job as a supervised service: ``<venv python> -m eightbox.monitoring``, which runs
the four-layer checks every ``monitoring_interval_s`` (monitoring/service.py) and beats in between
(deploy/periodic_service.py says what healthy means).

`eightbox up` runs it (`stack_services(with_loop=True)`); the demo does not: its loop monitors each
simulated day itself, and wall-clock windows would see none of its traffic.
"""

from __future__ import annotations

from eightbox.monitoring.service import heartbeat_path
from eightbox.settings import Settings

from .periodic_service import periodic_service, read_heartbeat
from .services import ServiceSpec

NAME = "monitoring"


def heartbeat(settings: Settings) -> dict | None:
    """The service's last heartbeat ({time, pid, busy, last_end, alerts, error}), or None."""
    return read_heartbeat(heartbeat_path(settings))


def monitoring(settings: Settings) -> ServiceSpec:
    return periodic_service(NAME, settings, heartbeat_path(settings), "eightbox.monitoring")
