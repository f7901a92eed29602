"""Start, stop, restart and report on the streaming feature job, through Flink's REST API.

These are the functions behind `eightbox features stream start|stop|status`:

- ``start(settings, restore=None) -> job_id``: submits the job (a short-lived Python process plans
  it and hands it to the session cluster), optionally from a checkpoint or savepoint path.
- ``stop(settings, job_id=None, savepoint=True) -> savepoint path | None``: stop with a savepoint
  (or cancel); checkpoints are retained on cancellation, so either can be resumed.
- ``restart(settings, job_id=None) -> job_id``: cancel the job if it still exists, then start it
  again from the newest retained checkpoint or savepoint (nothing lost, nothing counted twice).
- ``status(settings, job_id=None) -> dict``: state, ids, checkpoint counts, latest checkpoint.
- ``ensure(settings) -> (job_id, what was done)``: the running job, else one resumed from the newest
  retained checkpoint or savepoint, else a fresh one; idempotent, so a deployment can retry it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from eightbox.deploy.flink_service import checkpoints_dir, rest_url, savepoints_dir
from eightbox.settings import Settings

from .sql import JOB_NAME, JobOptions

ACTIVE = {"INITIALIZING", "CREATED", "RUNNING", "RESTARTING", "FAILING", "CANCELLING", "RECONCILING"}


class StreamJobError(RuntimeError):
    """A one-line reason a control operation failed."""


def _request(settings: Settings, path: str, method: str = "GET", body: dict | None = None,
             timeout: float = 10.0) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{rest_url(settings)}{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
    except urllib.error.HTTPError as e:
        raise StreamJobError(f"Flink REST {method} {path}: HTTP {e.code} {e.read()[:300]!r}") from None
    except OSError as e:
        raise StreamJobError(f"Flink REST at {rest_url(settings)} unreachable ({e}); is the cluster up?") from None
    return json.loads(raw) if raw.strip() else {}


def jobs(settings: Settings) -> list[dict]:
    """Every job the cluster knows: [{jid, name, state, start-time, ...}], newest first."""
    out = _request(settings, "/jobs/overview").get("jobs", [])
    return sorted(out, key=lambda j: j.get("start-time", 0), reverse=True)


def find_job(settings: Settings, active_only: bool = True) -> str | None:
    """Id of the newest feature job (an active one unless `active_only` is False)."""
    for job in jobs(settings):
        if job.get("name") == JOB_NAME and (not active_only or job.get("state") in ACTIVE):
            return job["jid"]
    return None


def _job_env(settings: Settings) -> dict[str, str]:
    url = rest_url(settings).removeprefix("http://")
    return {**settings.child_env(), "EIGHTBOX_KAFKA_BOOTSTRAP": settings.kafka_servers,
            "EIGHTBOX_FLINK_JOBMANAGER": url}


def start(settings: Settings, restore: str | None = None, opts: JobOptions | None = None,
          timeout: float = 180.0) -> str:
    """Submit the job to the session cluster; returns its job id once it is accepted."""
    if find_job(settings):
        raise StreamJobError(f"the feature job is already running ({find_job(settings)}); stop it first")
    opts = opts or JobOptions(kafka_servers=settings.kafka_servers)
    cmd = [sys.executable, "-m", "eightbox.features.stream.job",
           "--out-of-orderness-s", str(opts.out_of_orderness_s), "--idle-timeout-s", str(opts.idle_timeout_s),
           "--items-idle-timeout-s", str(opts.items_idle_timeout_s),
           "--checkpoint-interval-s", str(opts.checkpoint_interval_s), "--startup-mode", opts.startup_mode,
           "--group-id", opts.group_id, "--transactional-id-prefix", opts.transactional_id_prefix,
           *(["--startup-timestamp-ms", str(opts.startup_timestamp_ms)] if opts.startup_timestamp_ms else [])]
    if not opts.exactly_once:
        cmd.append("--at-least-once")
    if restore:
        cmd += ["--restore", restore]
    done = subprocess.run(cmd, capture_output=True, text=True, env=_job_env(settings), timeout=timeout)
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{") and "job_id" in line:
            return json.loads(line)["job_id"]
    tail = (done.stderr.strip().splitlines() or ["no output"])
    reason = next((ln for ln in reversed(tail) if "Exception" in ln or "Error" in ln), tail[-1])
    raise StreamJobError(f"job submission failed (exit {done.returncode}): {reason[:500]}")


def ensure(settings: Settings, opts: JobOptions | None = None, timeout: float = 90.0) -> tuple[str, str]:
    """The feature job running: the running one, else resumed from its newest retained checkpoint or
    savepoint (nothing recounted), else started from the earliest offsets. Returns (job id, what was
    done: "already running", "resumed from <path>" or "started")."""
    job_id = find_job(settings)
    if job_id:
        return job_id, "already running"
    restore = latest_checkpoint(settings)
    job_id = start(settings, restore=restore, opts=opts)
    wait_state(settings, job_id, {"RUNNING"}, timeout=timeout)
    return job_id, f"resumed from {restore}" if restore else "started"


def wait_state(settings: Settings, job_id: str, states: set[str], timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    state = "UNKNOWN"
    while time.monotonic() < deadline:
        try:
            state = _request(settings, f"/jobs/{job_id}")["state"]
        except StreamJobError:
            state = "UNKNOWN"
        if state in states:
            return state
        time.sleep(0.5)
    raise StreamJobError(f"job {job_id} is {state}, not {sorted(states)}, after {timeout:.0f} s")


def checkpoints(settings: Settings, job_id: str) -> dict:
    """Flink's checkpoint statistics of a job (counts, latest completed with its external path)."""
    return _request(settings, f"/jobs/{job_id}/checkpoints")


def latest_checkpoint(settings: Settings, job_id: str | None = None) -> str | None:
    """Newest retained checkpoint or savepoint: the cluster's word for the job if it has one,
    else the newest ``_metadata`` under the checkpoint and savepoint directories."""
    if job_id:
        try:
            latest = checkpoints(settings, job_id).get("latest") or {}
            done = [c for c in (latest.get("completed"), latest.get("savepoint")) if c and c.get("external_path")]
            if done:
                return max(done, key=lambda c: c.get("latest_ack_timestamp", 0))["external_path"]
        except StreamJobError:
            pass
    candidates = [p for d in (checkpoints_dir(settings), savepoints_dir(settings))
                  for p in Path(d).glob("*/*/_metadata") if p.is_file()]
    if job_id:
        own = [p for p in candidates if job_id in str(p)]
        candidates = own or candidates
    if not candidates:
        return None
    return Path(max(candidates, key=lambda p: p.stat().st_mtime)).parent.as_uri()


def stop(settings: Settings, job_id: str | None = None, savepoint: bool = True,
         timeout: float = 120.0) -> str | None:
    """Stop the job with a savepoint (returned) or, with savepoint=False, cancel it (None)."""
    job_id = job_id or find_job(settings)
    if not job_id:
        return None
    if not savepoint:
        _request(settings, f"/jobs/{job_id}?mode=cancel", method="PATCH")
        wait_state(settings, job_id, {"CANCELED", "FAILED", "FINISHED"}, timeout)
        return None
    trigger = _request(settings, f"/jobs/{job_id}/stop", method="POST",
                       body={"drain": False, "targetDirectory": savepoints_dir(settings).as_uri()})["request-id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        res = _request(settings, f"/jobs/{job_id}/savepoints/{trigger}")
        if res.get("status", {}).get("id") == "COMPLETED":
            op = res.get("operation", {})
            if "failure-cause" in op:
                raise StreamJobError(f"stop-with-savepoint failed: {str(op['failure-cause'])[:300]}")
            wait_state(settings, job_id, {"FINISHED", "CANCELED", "FAILED"}, timeout)
            return op.get("location")
        time.sleep(0.5)
    raise StreamJobError(f"stop-with-savepoint of {job_id} did not complete in {timeout:.0f} s")


def restart(settings: Settings, job_id: str | None = None, opts: JobOptions | None = None) -> str:
    """Cancel the job if it still exists, then start it from its newest retained checkpoint."""
    job_id = job_id or find_job(settings) or find_job(settings, active_only=False)
    if job_id and find_job(settings) == job_id:
        stop(settings, job_id, savepoint=False)
    path = latest_checkpoint(settings, job_id)
    if not path:
        raise StreamJobError("no retained checkpoint or savepoint to restart from")
    return start(settings, restore=path, opts=opts)


def status(settings: Settings, job_id: str | None = None) -> dict:
    """{'job_id', 'state', 'start_time', 'checkpoints_completed', 'checkpoints_failed', 'latest_checkpoint'}
    of the feature job (state 'NOT_RUNNING' when the cluster has none)."""
    job_id = job_id or find_job(settings) or find_job(settings, active_only=False)
    if not job_id:
        return {"job_id": None, "state": "NOT_RUNNING"}
    job = _request(settings, f"/jobs/{job_id}")
    out = {"job_id": job_id, "state": job.get("state"), "start_time": job.get("start-time")}
    try:
        cp = checkpoints(settings, job_id)
        counts = cp.get("counts", {})
        out.update(checkpoints_completed=counts.get("completed", 0), checkpoints_failed=counts.get("failed", 0),
                   latest_checkpoint=((cp.get("latest") or {}).get("completed") or {}).get("external_path"))
    except StreamJobError:
        pass
    return out
