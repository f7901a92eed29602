"""The monitoring job as a supervised service: ``<venv python> -m eightbox.monitoring``, which runs
the four-layer checks every ``monitoring_interval_s`` (monitoring/__main__.py).

- healthy: the process is alive (the supervisor's own check) and its heartbeat
  ``<run_dir>/monitoring.heartbeat`` was rewritten within `HEARTBEAT_STALE_S` (it beats every few
  seconds between runs). A failed run (no champion yet) leaves the service healthy: its heartbeat
  carries the error, and the next interval tries again.
- environment: the child gets the parent's Settings as ``EIGHTBOX_*`` variables (`child_env`).

`eightbox up` runs it (`stack_services(with_monitoring=True)`); the demo does not: its loop monitors
each simulated day itself, and wall-clock windows would see none of its traffic.
"""

from __future__ import annotations

import json
import sys
import time

from eightbox.monitoring.service import heartbeat_path
from eightbox.settings import Settings

from .services import ServiceSpec

NAME = "monitoring"
HEARTBEAT_STALE_S = 30.0


def heartbeat(settings: Settings) -> dict | None:
    """The service's last heartbeat ({time, pid, last_end, alerts, error}), or None."""
    try:
        return json.loads(heartbeat_path(settings).read_text())
    except (OSError, ValueError):
        return None


def monitoring(settings: Settings) -> ServiceSpec:
    def prepare() -> None:
        heartbeat_path(settings).unlink(missing_ok=True)  # a stale beat from an earlier run must not count

    def healthy() -> bool:
        beat = heartbeat(settings)
        return bool(beat and time.time() - beat.get("time", 0) < HEARTBEAT_STALE_S)

    def command() -> list[str]:
        return [sys.executable, "-m", "eightbox.monitoring"]

    # No listening port: 0 (as the pusher).
    return ServiceSpec(NAME, 0, command, healthy, prepare, env=settings.child_env({}))
