"""What the embedded stack runs: one spec per engine, built from Settings.

Each spec says how to prepare (first-start set-up), how to launch in the foreground, and how to
tell that the service is healthy. The supervisor owns processes; this module owns commands.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from eightbox.settings import Settings

HERE = Path(__file__).resolve().parent


class StackError(RuntimeError):
    """A one-line, actionable reason the stack cannot start."""


@dataclass
class ServiceSpec:
    name: str
    port: int
    command: Callable[[], list[str]]  # built at start, so a missing binary fails only then
    healthy: Callable[[], bool]
    prepare: Callable[[], None] = lambda: None
    env: dict[str, str] = field(default_factory=dict)
    extra_ports: tuple[int, ...] = ()



def http_ok(url: str, timeout: float = 1.0) -> bool:
    """True when GET `url` answers 200 within `timeout` (a service's health check)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status == 200
    except Exception:
        return False


def require_topics(settings: Settings, service: str) -> None:
    """The contract's topics exist (a consumer would otherwise wait for topics the broker never
    auto-creates), or a one-line StackError naming the service that needed Kafka."""
    from eightbox.ingest.topics import ensure_topics

    try:
        ensure_topics(settings)
    except Exception as e:
        raise StackError(f"{service}: Kafka at {settings.kafka_servers} is not reachable ({e}); "
                         "start kafka first") from None


def java_binary() -> str:
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not Path(java).exists():
        raise StackError("Java not found: install OpenJDK 17+ (apt-get install openjdk-17-jre-headless) or set JAVA_HOME")
    return java


def _tcp_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def kafka(settings: Settings) -> ServiceSpec:
    jars = settings.jars_dir / "kafka"
    root = settings.data_dir / "kafka"
    config = root / "server.properties"

    def prepare() -> None:
        if not any(jars.glob("kafka_2.13-*.jar")):
            raise StackError(f"Kafka jars missing in {jars}: run `make setup` (fetches them with Maven)")
        root.mkdir(parents=True, exist_ok=True)
        config.write_text(_kafka_properties(settings, root / "logs"))
        if not (root / "logs" / "meta.properties").exists():  # storage is formatted once, on first start
            _run_java(settings, ["kafka.tools.StorageTool", "format", "-t", _cluster_id(root), "-c", str(config)])

    def healthy() -> bool:
        if not _tcp_open(settings.kafka_port):
            return False
        from kafka import KafkaAdminClient  # imported late: kafka-python is slow to import

        try:
            admin = KafkaAdminClient(bootstrap_servers=settings.kafka_servers, request_timeout_ms=3000)
            admin.list_topics()
            admin.close()
            return True
        except Exception:
            return False

    def command() -> list[str]:
        return [*_java_command(settings), "kafka.Kafka", str(config)]

    return ServiceSpec("kafka", settings.kafka_port, command, healthy, prepare,
                       extra_ports=(settings.kafka_controller_port,))


def _java_command(settings: Settings) -> list[str]:
    heap = settings.kafka_heap
    return [java_binary(), f"-Xmx{heap}", f"-Xms{heap}", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={HERE / 'log4j2.yaml'}",
            "-cp", str(settings.jars_dir / "kafka" / "*")]


def _run_java(settings: Settings, args: list[str]) -> None:
    import subprocess

    cmd = [*_java_command(settings), *args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise StackError(f"`{args[0]}` failed: {done.stderr.strip().splitlines()[-1:]}")


def _cluster_id(root: Path) -> str:
    path = root / "cluster.id"
    if not path.exists():
        # Kafka wants a base64 UUID; 22 url-safe characters of a random UUID is that form.
        import base64

        cluster_id = "-"
        while cluster_id.startswith("-"):  # Kafka's own rule: a leading '-' reads as a CLI flag
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        path.write_text(cluster_id)
    return path.read_text().strip()


def _kafka_properties(settings: Settings, log_dir: Path) -> str:
    p, c = settings.kafka_port, settings.kafka_controller_port
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{c}",
        "listeners": f"PLAINTEXT://127.0.0.1:{p},CONTROLLER://127.0.0.1:{c}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{p}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(log_dir),
        # One node: internal topics cannot have more than one replica.
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "6",  # not 50: the first consumer group waits for them all
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        # Topics come from the event contract (ingest/schema.py), never from a typo in a client.
        "auto.create.topics.enable": "false",
        "log.retention.hours": "168",
        "num.partitions": "3",
    }
    return "".join(f"{k}={v}\n" for k, v in props.items())


def redis(settings: Settings) -> ServiceSpec:
    root = settings.data_dir / "redis"
    binary = shutil.which("redis-server")

    def prepare() -> None:
        if not binary:
            raise StackError("redis-server not found: run `make setup` (installs Debian's redis-server) "
                             "or set EIGHTBOX_REDIS_URL to a running server")
        root.mkdir(parents=True, exist_ok=True)

    def healthy() -> bool:
        import redis as redis_client

        try:
            return bool(redis_client.Redis(port=settings.redis_port, socket_timeout=1).ping())
        except Exception:
            return False

    def command() -> list[str]:
        return [binary or "redis-server", "--port", str(settings.redis_port), "--bind", "127.0.0.1",
                "--dir", str(root), "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
                "--maxmemory", settings.redis_maxmemory, "--daemonize", "no", "--protected-mode", "yes"]

    return ServiceSpec("redis", settings.redis_port, command, healthy, prepare)


def mlflow(settings: Settings) -> ServiceSpec:
    root = settings.data_dir / "mlflow"

    def prepare() -> None:
        (root / "artifacts").mkdir(parents=True, exist_ok=True)

    def healthy() -> bool:
        return http_ok(f"http://127.0.0.1:{settings.mlflow_port}/health")

    def command() -> list[str]:
        return [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
                "--port", str(settings.mlflow_port), "--workers", "1",
                "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                "--artifacts-destination", (root / "artifacts").as_uri()]

    # The job runner spawns a pool of worker processes (~1.5 GiB) for GenAI jobs we do not use.
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    return ServiceSpec("mlflow", settings.mlflow_port, command, healthy, prepare, env=env)


def embedded_services(settings: Settings) -> dict[str, ServiceSpec]:
    """The embedded stack, in start order."""
    from .flink_service import flink_services  # it builds on this module's ServiceSpec

    specs = (kafka(settings), *flink_services(settings), redis(settings), mlflow(settings))
    return {s.name: s for s in specs}
