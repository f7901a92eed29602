"""The embedded Flink session cluster: one JobManager and one TaskManager, in the foreground.

Both run from the Flink distribution that the `apache-flink` wheel bundles (``pyflink/bin``,
``pyflink/lib``), through its own ``jobmanager.sh``/``taskmanager.sh start-foreground`` (which compute the JVM memory flags from the
config and then ``exec`` java, so the supervised pid is the JVM). Their configuration is written
under ``<data_dir>/flink/conf`` from Settings on every start; checkpoints and savepoints go to
``<data_dir>/flink/checkpoints`` and ``.../savepoints``.

Memory is sized for a 2-core / 24 GiB machine: JobManager 768 MiB process, TaskManager
``flink_taskmanager_memory`` (default 1536m) with a small managed-memory share (the job keeps its
state on the heap: hashmap state backend). The TaskManager's RPC port is ``flink_rpc_port + 1``
so that the supervisor has a port to check.
"""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path

from eightbox.settings import Settings

from .services import ServiceSpec, StackError, java_binary

JOBMANAGER, TASKMANAGER = "flink-jobmanager", "flink-taskmanager"

# Java 17 needs these opens for Flink's serializers (copied from the distribution's config.yaml).
_JAVA_OPTS = " ".join([
    "--add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED",
    "--add-exports=jdk.compiler/com.sun.tools.javac.api=ALL-UNNAMED",
    "--add-exports=jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED",
    "--add-exports=jdk.compiler/com.sun.tools.javac.parser=ALL-UNNAMED",
    "--add-exports=jdk.compiler/com.sun.tools.javac.tree=ALL-UNNAMED",
    "--add-exports=jdk.compiler/com.sun.tools.javac.util=ALL-UNNAMED",
    "--add-exports=java.security.jgss/sun.security.krb5=ALL-UNNAMED",
    *(f"--add-opens=java.base/{p}=ALL-UNNAMED" for p in (
        "java.lang", "java.net", "java.io", "java.nio", "sun.nio.ch", "java.lang.reflect", "java.text",
        "java.time", "java.util", "java.util.concurrent", "java.util.concurrent.atomic",
        "java.util.concurrent.locks")),
])


def flink_home() -> Path:
    """The Flink distribution inside the installed `apache-flink` wheel."""
    import pyflink

    return Path(pyflink.__file__).resolve().parent


def flink_root(settings: Settings) -> Path:
    return settings.data_dir / "flink"


def checkpoints_dir(settings: Settings) -> Path:
    return flink_root(settings) / "checkpoints"


def savepoints_dir(settings: Settings) -> Path:
    return flink_root(settings) / "savepoints"


def connector_jar(settings: Settings) -> Path:
    jars = sorted((settings.jars_dir / "flink").glob("flink-sql-connector-kafka-*.jar"))
    if not jars:
        raise StackError(f"Flink Kafka connector missing in {settings.jars_dir / 'flink'}: run `make setup`")
    return jars[-1]


def rest_url(settings: Settings) -> str:
    if settings.flink_jobmanager:
        address = settings.flink_jobmanager
        return address if address.startswith("http") else f"http://{address}"
    return f"http://127.0.0.1:{settings.flink_rest_port}"


def taskmanager_rpc_port(settings: Settings) -> int:
    return settings.flink_rpc_port + 1


def flink_config(settings: Settings) -> dict[str, str]:
    root = flink_root(settings)
    return {
        "jobmanager.rpc.address": "127.0.0.1",
        "jobmanager.rpc.port": str(settings.flink_rpc_port),
        "jobmanager.bind-host": "127.0.0.1",
        "jobmanager.memory.process.size": "768m",
        "jobmanager.execution.failover-strategy": "region",
        "rest.address": "127.0.0.1",
        "rest.bind-address": "127.0.0.1",
        "rest.port": str(settings.flink_rest_port),
        "taskmanager.host": "127.0.0.1",
        "taskmanager.bind-host": "127.0.0.1",
        "taskmanager.rpc.port": str(taskmanager_rpc_port(settings)),
        "taskmanager.numberOfTaskSlots": "2",
        "taskmanager.memory.process.size": settings.flink_taskmanager_memory,
        "taskmanager.memory.managed.fraction": "0.05",
        "taskmanager.memory.network.min": "32m",
        "taskmanager.memory.network.max": "64m",
        "parallelism.default": "1",
        "state.backend.type": "hashmap",
        "execution.checkpointing.dir": checkpoints_dir(settings).as_uri(),
        "execution.checkpointing.savepoint-dir": savepoints_dir(settings).as_uri(),
        "execution.checkpointing.num-retained": "3",
        "restart-strategy.type": "fixed-delay",
        "restart-strategy.fixed-delay.attempts": "1000000",
        "restart-strategy.fixed-delay.delay": "2 s",
        # A SIGKILLed TaskManager is noticed in seconds, not the default 50 s.
        "heartbeat.interval": "2000",
        "heartbeat.timeout": "10000",
        "io.tmp.dirs": str(root / "tmp"),
        "web.tmpdir": str(root / "web"),
        "web.upload.dir": str(root / "web"),
        "blob.storage.directory": str(root / "blobs"),
        "env.java.opts.all": _JAVA_OPTS,
        # Python UDFs (none today) would run on the venv's interpreter, not `python` from PATH.
        "python.executable": sys.executable,
        "python.client.executable": sys.executable,
    }


def _write_config(settings: Settings) -> Path:
    root = flink_root(settings)
    conf = root / "conf"
    for d in (conf, root / "log", root / "tmp", root / "web", root / "blobs",
              checkpoints_dir(settings), savepoints_dir(settings)):
        d.mkdir(parents=True, exist_ok=True)
    # Flat keys are valid YAML and valid Flink 2 config; values are quoted as JSON strings.
    (conf / "config.yaml").write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in flink_config(settings).items()))
    dist_conf = flink_home() / "conf"
    for name in ("log4j-console.properties", "log4j-cli.properties", "log4j.properties"):
        (conf / name).write_text((dist_conf / name).read_text())
    return conf


def _env(settings: Settings) -> dict[str, str]:
    root = flink_root(settings)
    return {"FLINK_CONF_DIR": str(root / "conf"), "FLINK_LOG_DIR": str(root / "log"),
            "FLINK_PID_DIR": str(root / "run"), "FLINK_HOME": str(flink_home()), "MAX_LOG_FILE_NUMBER": "3"}


def overview(settings: Settings, timeout: float = 1.0) -> dict | None:
    try:
        with urllib.request.urlopen(f"{rest_url(settings)}/overview", timeout=timeout) as r:
            return json.loads(r.read())
    except Exception:
        return None


def _live_taskmanagers(settings: Settings) -> int:
    """TaskManagers registered with the JobManager whose last heartbeat is recent."""
    import time

    try:
        with urllib.request.urlopen(f"{rest_url(settings)}/taskmanagers", timeout=1.0) as r:
            tms = json.loads(r.read()).get("taskmanagers", [])
    except Exception:
        return 0
    now_ms = time.time() * 1000
    return sum(1 for tm in tms if now_ms - tm.get("timeSinceLastHeartbeat", 0) < 6000)


def flink_services(settings: Settings) -> list[ServiceSpec]:
    """JobManager then TaskManager; the cluster is healthy once a TaskManager has registered."""
    bin_dir = flink_home() / "bin"

    def prepare() -> None:
        java_binary()  # a one-line reason when Java is missing
        connector_jar(settings)
        _write_config(settings)

    def jm_command() -> list[str]:
        return ["bash", str(bin_dir / "jobmanager.sh"), "start-foreground"]

    def tm_command() -> list[str]:
        return ["bash", str(bin_dir / "taskmanager.sh"), "start-foreground"]

    def jm_healthy() -> bool:
        return overview(settings) is not None

    def tm_healthy() -> bool:
        ov = overview(settings)
        return bool(ov and ov.get("taskmanagers", 0) >= 1 and _live_taskmanagers(settings) >= 1)

    env = _env(settings)
    return [
        ServiceSpec(JOBMANAGER, settings.flink_rest_port, jm_command, jm_healthy, prepare, env=dict(env),
                    extra_ports=(settings.flink_rpc_port,)),
        ServiceSpec(TASKMANAGER, taskmanager_rpc_port(settings), tm_command, tm_healthy, prepare, env=dict(env)),
    ]
