"""docker-compose.yml configures Eightbox only through real Settings fields (no Docker needed)."""

from __future__ import annotations

from pathlib import Path

import yaml

from eightbox.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_every_eightbox_variable_in_compose_is_a_settings_field():
    fields = {f"EIGHTBOX_{name.upper()}" for name in Settings.model_fields}
    compose = _compose()
    env = compose["x-eightbox"]["environment"]
    every = {k for svc in compose["services"].values() for k in (svc.get("environment") or {})} | set(env)
    unknown = [k for k in every if k.startswith("EIGHTBOX_") and k not in fields]
    assert not unknown, f"not settings fields: {unknown}"
    assert {"EIGHTBOX_KAFKA_BOOTSTRAP", "EIGHTBOX_REDIS_URL", "EIGHTBOX_MLFLOW_TRACKING_URI"} <= set(env)


def test_compose_runs_the_services_the_embedded_stack_runs():
    services = _compose()["services"]
    assert {"kafka", "redis", "mlflow", "archiver", "pusher", "serving", "monitoring"} <= set(services)
    assert services["redis"]["command"][-1] == "everysec", "same AOF policy as the embedded Redis"
    for name in ("topics", "archiver"):  # commands exist in the CLI
        assert services[name]["command"][0] in {"topics", "archive"}
