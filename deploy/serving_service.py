"""The serving API as a supervised service: ``<venv python> -m eightbox.serving`` on `serving_port`.

- prepare: the contract's topics exist (impressions and client events are produced to them) and the
  Feast registry is applied (the funnel reads features through it); both idempotent.
- healthy: GET /healthz answers 200, i.e. the process bootstrapped and its event loop serves. Not
  /readyz: a server without a champion is healthy and answers the lower rungs (readyz says 503).
- environment: the child gets the parent's Settings as ``EIGHTBOX_*`` variables (`child_env`), so a
  stack built from overridden Settings runs its server against the same services and model name.
"""

from __future__ import annotations

import sys

from eightbox.settings import Settings

from .services import ServiceSpec, http_ok, require_topics

NAME = "serving"


def base_url(settings: Settings) -> str:
    return f"http://{settings.serving_host}:{settings.serving_port}"


def serving(settings: Settings) -> ServiceSpec:
    def prepare() -> None:
        from eightbox.features.store import apply

        require_topics(settings, NAME)
        apply(settings)

    def healthy() -> bool:
        return http_ok(f"{base_url(settings)}/healthz")

    def command() -> list[str]:
        return [sys.executable, "-m", "eightbox.serving"]

    return ServiceSpec(NAME, settings.serving_port, command, healthy, prepare, env=settings.child_env({}))
