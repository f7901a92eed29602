"""Supervisor guards that need no JVM: clear errors, and never stopping someone else's process."""

from __future__ import annotations

import json
import socket
import subprocess

import pytest

from eightbox.deploy import services
from eightbox.deploy.services import StackError
from eightbox.deploy.supervisor import Supervisor
from eightbox.settings import Settings


def test_missing_java_gives_a_one_line_error_that_says_what_to_do(monkeypatch):
    monkeypatch.setenv("JAVA_HOME", "/nonexistent-jdk")
    with pytest.raises(StackError, match="Java not found: install OpenJDK 17"):
        services.java_binary()


def test_a_taken_port_names_the_port_and_the_setting_to_change(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        supervisor = Supervisor(Settings(home=tmp_path, redis_port=port))
        with pytest.raises(StackError) as err:
            supervisor.start("redis", progress=lambda _: None)
    assert f"port {port}" in str(err.value) and "EIGHTBOX_REDIS_PORT" in str(err.value)
    assert "\n" not in str(err.value)


def test_down_never_stops_a_process_it_did_not_start(tmp_path):
    stranger = subprocess.Popen(["sleep", "30"])
    try:
        supervisor = Supervisor(Settings(home=tmp_path))
        supervisor.run_dir.mkdir(parents=True)
        # A state file naming the stranger's pid but another start time: a recycled pid.
        (supervisor.run_dir / "redis.json").write_text(json.dumps({"pid": stranger.pid, "create_time": 1.0}))
        supervisor.down(progress=lambda _: None)
        assert stranger.poll() is None, "a process we did not start was stopped"
        assert not (supervisor.run_dir / "redis.json").exists(), "the stale state file is cleared"
    finally:
        stranger.kill()
        stranger.wait()


def test_kafka_cluster_ids_never_start_with_a_dash(tmp_path):
    # A leading '-' makes Kafka's storage tool read the id as a flag (1 in 64 random ids did).
    ids = [services._cluster_id(tmp_path / str(i)) for i in range(400) if (tmp_path / str(i)).mkdir() is None]
    assert len(set(ids)) == 400 and not any(i.startswith("-") for i in ids)


def test_services_do_not_inherit_the_temporary_metrics_folder_feast_gives_its_importer():
    from eightbox.deploy.supervisor import child_environ

    base = {"PATH": "/bin", "PROMETHEUS_MULTIPROCESS_DIR": "/tmp/feast_metrics_ab12", "PROMETHEUS_MULTIPROC_DIR":
            "/tmp/feast_metrics_ab12"}
    assert child_environ({"EIGHTBOX_ENV": "test"}, base) == {"PATH": "/bin", "EIGHTBOX_ENV": "test"}
    chosen = {"PROMETHEUS_MULTIPROC_DIR": "/var/metrics"}  # one an operator set stays
    assert child_environ({}, chosen) == chosen
