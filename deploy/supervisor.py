"""Starts, health-checks, reports on and stops the embedded stack's processes.

Each started service leaves a state file ``<home>/run/<name>.json`` with its pid and the process
creation time; `down` stops a pid only when both still match, so it never kills a process it did
not start (a recycled pid, or a server someone else runs on the same port).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from eightbox.settings import Settings

from .services import ServiceSpec, StackError, embedded_services


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    running: bool
    healthy: bool
    pid: int | None
    port: int
    rss_mb: float

    @property
    def state(self) -> str:
        return "healthy" if self.healthy else ("starting/unhealthy" if self.running else "stopped")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _port_owner(port: int) -> str:
    try:
        for c in psutil.net_connections("tcp"):
            if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN and c.pid:
                return f" by pid {c.pid} ({psutil.Process(c.pid).name()})"
    except (psutil.Error, OSError):
        pass
    return ""


# Importing Feast points these at a temporary folder of the importing process, removed when it
# exits. A service started from `eightbox up` outlives that process, and prometheus_client there
# failed on the vanished folder (FileNotFoundError in the controller, minutes after `up` returned).
_FEAST_METRICS_VARS = ("PROMETHEUS_MULTIPROCESS_DIR", "PROMETHEUS_MULTIPROC_DIR")


def child_environ(extra: dict[str, str], base: dict[str, str] | None = None) -> dict[str, str]:
    """A service's environment: ours plus `extra`, without Feast's per-process metrics folder."""
    env = {**(os.environ if base is None else base), **extra}
    for var in _FEAST_METRICS_VARS:
        if Path(env.get(var, "")).name.startswith("feast_metrics_"):
            del env[var]
    return env


class Supervisor:
    def __init__(self, settings: Settings, services: dict[str, ServiceSpec] | None = None):
        self.settings = settings
        self.services = services if services is not None else embedded_services(settings)
        self.run_dir = settings.run_dir

    # --- state files ----------------------------------------------------------------------
    def _state_path(self, name: str) -> Path:
        return self.run_dir / f"{name}.json"

    def _process(self, name: str) -> psutil.Process | None:
        """Our live process for a service, or None (stale state files are removed)."""
        path = self._state_path(name)
        if not path.exists():
            return None
        state = json.loads(path.read_text())
        try:
            proc = psutil.Process(state["pid"])
            if abs(proc.create_time() - state["create_time"]) < 0.01 and proc.status() != psutil.STATUS_ZOMBIE:
                return proc
        except psutil.Error:
            pass
        path.unlink(missing_ok=True)
        return None

    # --- lifecycle ------------------------------------------------------------------------
    def up(self, names: list[str] | None = None, progress=print) -> None:
        for name in names or list(self.services):
            self.start(name, progress)

    def start(self, name: str, progress=print) -> None:
        spec = self.services[name]
        if self._process(name):
            progress(f"{name}: already running")
            return
        for port in (spec.port, *spec.extra_ports):
            if not _port_free(port):
                env = f"EIGHTBOX_{name.upper()}_PORT" if port == spec.port else "the port settings"
                raise StackError(f"{name}: port {port} is already taken{_port_owner(port)}; "
                                 f"stop that process or set {env} to a free port")
        spec.prepare()
        logs = self.run_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with open(logs / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(spec.command(), stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True,
                                    env=child_environ(spec.env))
        create_time = psutil.Process(proc.pid).create_time()
        self._state_path(name).write_text(json.dumps(
            {"pid": proc.pid, "create_time": create_time, "port": spec.port, "started_at": time.time()}))
        self._wait_healthy(spec, proc, progress)

    def _wait_healthy(self, spec: ServiceSpec, proc: subprocess.Popen, progress) -> None:
        deadline = time.monotonic() + self.settings.start_timeout_s
        started = time.monotonic()
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self._state_path(spec.name).unlink(missing_ok=True)
                raise StackError(f"{spec.name} exited with code {proc.returncode} while starting; "
                                 f"see {self.run_dir / 'logs' / (spec.name + '.log')}")
            if spec.healthy():
                where = f"on port {spec.port} " if spec.port else ""
                progress(f"{spec.name}: healthy {where}(pid {proc.pid}, {time.monotonic() - started:.1f} s)")
                return
            time.sleep(0.3)
        self.stop(spec.name)
        raise StackError(f"{spec.name} did not become healthy within {self.settings.start_timeout_s:.0f} s; "
                         f"see {self.run_dir / 'logs' / (spec.name + '.log')}")

    def stop(self, name: str, timeout: float = 30.0, sig: int = signal.SIGTERM) -> bool:
        """Stop our process for `name` (its whole process group); False if none was running."""
        proc = self._process(name)
        if proc is None:
            return False
        group = [proc, *proc.children(recursive=True)]
        for p in group:
            try:
                p.send_signal(sig)
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(group, timeout=timeout)
        for p in alive:
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(alive, timeout=5)
        self._state_path(name).unlink(missing_ok=True)
        return True

    def kill(self, name: str) -> None:
        """SIGKILL, as a crash would: for failure tests and for wedged services."""
        self.stop(name, timeout=5.0, sig=signal.SIGKILL)

    def down(self, names: list[str] | None = None, progress=print) -> None:
        for name in reversed(names or list(self.services)):
            if self.stop(name):
                progress(f"{name}: stopped")

    # --- reporting ------------------------------------------------------------------------
    def status(self) -> list[ServiceStatus]:
        out = []
        for name, spec in self.services.items():
            proc = self._process(name)
            rss = 0.0
            if proc:
                try:
                    rss = sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**20
                except psutil.Error:
                    pass
            out.append(ServiceStatus(name, proc is not None, bool(proc) and spec.healthy(),
                                     proc.pid if proc else None, spec.port, rss))
        return out
