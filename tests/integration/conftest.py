"""The real embedded stack (Kafka, Redis, MLflow), started once per test session on ports of its
own, under a temporary home, and stopped at the end; the end asserts that no process of ours is left."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import psutil
import pytest

from eightbox.deploy.supervisor import Supervisor
from eightbox.ingest.topics import ensure_topics
from eightbox.settings import Settings

# Offset from the defaults, so tests never touch a demo stack running beside them; a second test
# run at the same time sets EIGHTBOX_TEST_PORT_OFFSET to keep clear of the first. Every port stays
# below 32768, where Linux starts handing out ephemeral ports to client sockets: a fixed port inside
# that range can be taken at random by any outgoing connection (a CI run lost one that way).
EPHEMERAL_START = 32768
_OFFSET = int(os.environ.get("EIGHTBOX_TEST_PORT_OFFSET", "0"))
TEST_PORTS = {k: v + _OFFSET for k, v in dict(
    kafka_port=29092, kafka_controller_port=29093, redis_port=26379, mlflow_port=25000,
    flink_rest_port=28081, flink_rpc_port=26123).items()}


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
    # The closed loop reads whole topics into its own lake: it goes first, before other tests publish.
    items.sort(key=lambda item: item.get_closest_marker("closed_loop") is None)


@pytest.fixture(scope="session")
def stack_settings(tmp_path_factory) -> Settings:
    return Settings(env="test", home=tmp_path_factory.mktemp("stack"), **TEST_PORTS)


@pytest.fixture(scope="session")
def stack(stack_settings):
    supervisor = Supervisor(stack_settings)
    supervisor.up()
    ensure_topics(stack_settings)
    pids = {s.pid for s in supervisor.status()}
    yield supervisor
    pids |= {s.pid for s in supervisor.status()}  # a test may have restarted a service
    supervisor.down()
    leftovers = [p for p in pids if p and psutil.pid_exists(p)
                 and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not leftovers, f"processes left behind by the stack: {leftovers}"


@pytest.fixture
def lake_settings(stack, stack_settings, tmp_path) -> Settings:
    """Settings for one test's own lake and archiver group, on the shared broker."""
    return stack_settings.model_copy(update={"home": tmp_path, "archiver_group": f"archiver-{uuid.uuid4().hex[:8]}"})


def eightbox_bin() -> str:
    return str(Path(os.sys.executable).with_name("eightbox"))
