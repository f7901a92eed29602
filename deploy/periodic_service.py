"""A supervised service built on `eightbox.periodic` (work every interval, a heartbeat in between):
``<venv python> -m <module>`` with the parent's Settings as ``EIGHTBOX_*`` variables (`child_env`).

- healthy: the process is alive (the supervisor's own check) and its heartbeat file was rewritten
  within `HEARTBEAT_STALE_S` (it beats every few seconds, during a long run too). A failed run leaves
  the service healthy: its heartbeat carries the error, and the next interval tries again.
- prepare: the caller's own preparation, then a stale heartbeat from an earlier run is removed, so
  it cannot pass for this one's.
- No listening port: 0 (binding port 0 always succeeds, so the supervisor's port check passes).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from eightbox.settings import Settings

from .services import ServiceSpec

HEARTBEAT_STALE_S = 30.0


def read_heartbeat(path: Path) -> dict | None:
    """The last heartbeat ({time, pid, busy, ...what the last run returned}), or None."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def periodic_service(name: str, settings: Settings, heartbeat: Path, module: str, *args: str,
                     prepare_first: Callable[[], None] = lambda: None) -> ServiceSpec:
    """``python -m <module> <args>``; `prepare_first` runs before the stale heartbeat is removed."""
    def prepare() -> None:
        prepare_first()
        heartbeat.unlink(missing_ok=True)

    def healthy() -> bool:
        beat = read_heartbeat(heartbeat)
        return bool(beat and time.time() - beat.get("time", 0) < HEARTBEAT_STALE_S)

    def command() -> list[str]:
        return [sys.executable, "-m", module, *args]

    return ServiceSpec(name, 0, command, healthy, prepare, env=settings.child_env({}))
