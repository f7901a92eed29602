"""docker-compose.yml configures Eightbox only through real Settings fields (no Docker needed)."""

from __future__ import annotations

import importlib.util
import re
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
    assert {"kafka", "redis", "mlflow", "archiver", "pusher", "serving", "monitoring", "controller"} <= set(services)
    assert services["redis"]["command"][-1] == "everysec", "same AOF policy as the embedded Redis"
    for name in ("topics", "archiver"):  # commands exist in the CLI
        assert services[name]["command"][0] in {"topics", "archive"}
    for name in ("serving", "monitoring", "controller"):  # `python -m <module>`: the modules exist
        module = services[name]["entrypoint"][-1]
        assert importlib.util.find_spec(module) is not None, module


def _flink_properties(service: dict) -> dict[str, str]:
    lines = service["environment"]["FLINK_PROPERTIES"].strip().splitlines()
    return dict(line.split(": ", 1) for line in lines)


def test_the_streaming_job_has_a_flink_cluster_of_the_version_pyflink_ships():
    from importlib.metadata import version

    services = _compose()["services"]
    for name in ("flink-jobmanager", "flink-taskmanager"):
        assert services[name]["image"].startswith(f"flink:{version('apache-flink')}-"), services[name]["image"]
        assert _flink_properties(services[name])["jobmanager.rpc.address"] == "flink-jobmanager"
    job = services["stream-job"]
    assert job["command"] == ["features", "stream", "ensure"]  # idempotent: restarts are safe
    assert job["environment"]["EIGHTBOX_FLINK_JOBMANAGER"] == "flink-jobmanager:8081"


def test_flink_checkpoints_land_where_the_eightbox_settings_look_for_them():
    from eightbox.deploy.flink_service import checkpoints_dir, savepoints_dir

    compose = _compose()
    home = Path("/data")  # EIGHTBOX_HOME in deploy/Dockerfile, the lake volume's mount point
    assert "ENV EIGHTBOX_HOME=/data" in (ROOT / "deploy" / "Dockerfile").read_text()
    assert "lake:/data" in compose["services"]["flink-taskmanager"]["volumes"]
    props = _flink_properties(compose["services"]["flink-jobmanager"])
    settings = Settings(home=home)
    assert props["execution.checkpointing.dir"] == checkpoints_dir(settings).as_uri()
    assert props["execution.checkpointing.savepoint-dir"] == savepoints_dir(settings).as_uri()


def test_the_image_fetches_the_flink_kafka_connector_that_deploy_pom_pins():
    pom = (ROOT / "deploy" / "pom.xml").read_text()
    pinned = re.search(r"<flink.kafka.connector.version>(.+?)</flink.kafka.connector.version>", pom).group(1)
    assert f"ARG FLINK_KAFKA_CONNECTOR={pinned}\n" in (ROOT / "deploy" / "Dockerfile").read_text()
