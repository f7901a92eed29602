"""The feature pusher as a supervised service of the embedded stack.

`pusher(settings)` is a ServiceSpec whose process is ``<venv python> -m eightbox.cli features push``:
one member of the `settings.pusher_group` consumer group on ``eightbox.feature-updates``
(read_committed), pushing into Feast's Redis online store and appending the offline history
(features/pusher.py).

- prepare: the contract's topics exist (the consumer would otherwise wait for a topic that the broker
  never auto-creates) and the Feast registry is applied (`features.store.apply`, idempotent); a stale
  heartbeat from an earlier run is removed.
- healthy: the process is alive (the supervisor's own check) and its heartbeat file
  ``<run_dir>/pusher.heartbeat`` was rewritten within `HEARTBEAT_STALE_S` and says the consumer has
  partitions assigned (it has joined the group).
- environment: the child gets the parent's Settings as ``EIGHTBOX_*`` variables, so a stack built
  from overridden Settings (tests, the freshness bench) runs its pusher against the same services.

It is not in `deploy.services.embedded_services` (that is the set of engines, which tests count);
`stack_services(settings)` is the embedded stack plus this pusher and the serving API
(deploy/serving_service.py), in start order, as `make demo` and the freshness bench use it; with
`with_loop` also the wall-clock loop (an archiver, monitoring, the controller), as the CLI's
`up`/`down`/`status` use it.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from eightbox.settings import Settings

from .services import ServiceSpec, embedded_services, require_topics

NAME = "pusher"
HEARTBEAT_STALE_S = 15.0


def heartbeat_path(settings: Settings) -> Path:
    return settings.run_dir / "pusher.heartbeat"


def heartbeat(settings: Settings) -> dict | None:
    """The pusher's last heartbeat ({time, pid, assigned, pushed}), or None."""
    try:
        return json.loads(heartbeat_path(settings).read_text())
    except (OSError, ValueError):
        return None


def pusher(settings: Settings) -> ServiceSpec:
    def prepare() -> None:
        from eightbox.features.store import apply

        require_topics(settings, NAME)
        apply(settings)
        heartbeat_path(settings).unlink(missing_ok=True)

    def healthy() -> bool:
        beat = heartbeat(settings)
        return bool(beat and time.time() - beat.get("time", 0) < HEARTBEAT_STALE_S and beat.get("assigned", 0) > 0)

    def command() -> list[str]:
        return [sys.executable, "-m", "eightbox.cli", "features", "push",
                "--heartbeat", str(heartbeat_path(settings))]

    # No listening port: 0 (binding port 0 always succeeds, so the supervisor's port check passes).
    return ServiceSpec(NAME, 0, command, healthy, prepare, env=settings.child_env({}))


def stack_services(settings: Settings, with_pusher: bool = True,
                   only: tuple[str, ...] | None = None, with_serving: bool = True,
                   with_loop: bool = False) -> dict[str, ServiceSpec]:
    """The embedded stack (optionally without MLflow etc.: `only` names what to keep), the pusher, the
    serving API (it needs Kafka, Redis and MLflow; without a champion it answers lower rungs) and,
    when asked, the wall-clock loop: a lake archiver, the monitoring service and the controller that
    retrains and climbs the ladder (the demo's loop does all three itself, on simulated days)."""
    from .archiver_service import NAME as ARCHIVER, archiver
    from .controller_service import NAME as CONTROLLER, controller
    from .monitoring_service import NAME as MONITORING, monitoring
    from .serving_service import NAME as SERVING, serving

    services = embedded_services(settings)
    if with_loop:
        services[ARCHIVER] = archiver(settings)
    if with_pusher:
        services[NAME] = pusher(settings)
    if with_serving:
        services[SERVING] = serving(settings)
    if with_loop:
        services[MONITORING] = monitoring(settings)
        services[CONTROLLER] = controller(settings)
    if only is not None:
        services = {k: v for k, v in services.items() if k in only}
    return services
