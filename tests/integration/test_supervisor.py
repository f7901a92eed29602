"""The embedded supervisor against the real services."""

from __future__ import annotations

import psutil
import pytest

from eightbox.deploy.services import StackError
from eightbox.deploy.supervisor import Supervisor
from eightbox.settings import Settings

from .conftest import _OFFSET, EPHEMERAL_START, TEST_PORTS

# A second stack beside the session's, on ports no other test uses and below the ephemeral range.
SECOND_STACK_PORTS = {k: v + _OFFSET for k, v in dict(
    kafka_port=31092, kafka_controller_port=31093, redis_port=31379, mlflow_port=31000,
    flink_rest_port=31081, flink_rpc_port=31123).items()}


def test_status_reports_health_pid_port_and_memory_within_budget(stack, stack_settings):
    rows = {r.name: r for r in stack.status()}
    assert set(rows) == {"kafka", "flink-jobmanager", "flink-taskmanager", "redis", "mlflow"}
    for name, row in rows.items():
        assert row.healthy, f"{name} is not healthy"
        assert psutil.pid_exists(row.pid) and row.rss_mb > 1
    assert rows["kafka"].port == stack_settings.kafka_port
    assert sum(r.rss_mb for r in rows.values()) < 6 * 1024, "the stack at rest must stay under 6 GiB"


def test_up_then_down_leaves_no_process_of_ours(tmp_path):
    supervisor = Supervisor(Settings(env="test", home=tmp_path, **SECOND_STACK_PORTS))
    try:
        supervisor.up()
        started = [r for r in supervisor.status() if r.healthy]
        assert len(started) == len(supervisor.services) == 5
        family = {p.pid for r in started for p in [psutil.Process(r.pid), *psutil.Process(r.pid).children(True)]}
    finally:
        supervisor.down()
    alive = [p for p in family if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"left running: {alive}"
    assert not list((tmp_path / "run").glob("*.json")), "state files removed"
    assert all(not r.running for r in supervisor.status())


def test_a_taken_port_gives_a_one_line_error_and_leaves_the_running_stack_alone(stack, stack_settings, tmp_path):
    rival = Supervisor(stack_settings.model_copy(update={"home": tmp_path}))
    with pytest.raises(StackError) as err:
        rival.up(["kafka"])
    message = str(err.value)
    assert "\n" not in message
    assert str(stack_settings.kafka_port) in message and "EIGHTBOX_KAFKA_PORT" in message
    assert all(r.healthy for r in stack.status())


def test_fixed_ports_stay_below_the_ephemeral_range():
    defaults = Settings()
    fixed = [defaults.kafka_port, defaults.kafka_controller_port, defaults.redis_port, defaults.mlflow_port,
             defaults.flink_rest_port, defaults.flink_rpc_port + 1, defaults.serving_port,
             *TEST_PORTS.values(), TEST_PORTS["flink_rpc_port"] + 1,
             *SECOND_STACK_PORTS.values(), SECOND_STACK_PORTS["flink_rpc_port"] + 1]
    assert max(fixed) < EPHEMERAL_START
    assert not set(SECOND_STACK_PORTS.values()) & set(TEST_PORTS.values())
