"""The loop's controller as a supervised service: ``<venv python> -m eightbox.training.controller``,
which every ``controller_interval_s`` runs the nightly batch and retrains when due and steps the
promotion ladder (training/controller.py), and beats in between (deploy/periodic_service.py says
what healthy means).

`eightbox up` runs it (`stack_services(with_loop=True)`) beside the monitoring service whose
concept-drift alerts it acts on; the demo does not: its loop does the same on simulated days.
"""

from __future__ import annotations

from eightbox.settings import Settings
from eightbox.training.controller import heartbeat_path

from .periodic_service import periodic_service, read_heartbeat
from .services import ServiceSpec

NAME = "controller"


def heartbeat(settings: Settings) -> dict | None:
    """The controller's last heartbeat ({time, pid, busy, error, rung, notes}), or None."""
    return read_heartbeat(heartbeat_path(settings))


def controller(settings: Settings) -> ServiceSpec:
    return periodic_service(NAME, settings, heartbeat_path(settings), "eightbox.training.controller")
