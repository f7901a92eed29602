"""A supervised service that does its work every `interval_s` and beats in between: the monitoring
service and the loop's controller. The heartbeat (JSON: time, pid, plus what the last run returned)
is rewritten atomically every `BEAT_S`, from a thread of its own, so the supervisor can tell a live
service from a hung one; SIGTERM or SIGINT ends the wait, and the heartbeat is removed on the way out."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

BEAT_S = 5.0


def replace_file(path: Path, data: bytes) -> Path:
    """Write `data` beside `path`, then rename over it: a reader sees the old file or the new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def beat(path: Path, state: dict) -> None:
    replace_file(path, json.dumps({"time": time.time(), "pid": os.getpid(), **state}, default=str).encode())


@contextmanager
def beating(heartbeat: Path, state: Callable[[], dict]) -> Iterator[Callable[[], None]]:
    """Beat `state()` into `heartbeat` every `BEAT_S` from a thread while the block runs; on the way
    out stop, and remove the heartbeat (a stopped service leaves none). The block gets a function
    that beats at once, for a state change readers should see now rather than up to `BEAT_S` later."""
    done, wake = threading.Event(), threading.Event()

    def loop() -> None:
        while not done.is_set():
            wake.clear()  # before the beat: a wake during it brings another at once
            beat(heartbeat, state())
            wake.wait(BEAT_S)

    beater = threading.Thread(target=loop, name="heartbeat", daemon=True)
    beater.start()
    try:
        yield wake.set
    finally:
        done.set()
        wake.set()
        beater.join()
        heartbeat.unlink(missing_ok=True)


def run_periodic(heartbeat: Path, interval_s: float, work: Callable[[], dict], initial: dict | None = None) -> None:
    """Call `work` now and every `interval_s` until a signal; its dict goes into the heartbeat, which
    keeps beating while `work` runs too (a retrain takes minutes), with ``busy`` true.
    `work` handles its own failures (a service outlives a failed run)."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    state = {**(initial or {}), "busy": False}
    with beating(heartbeat, lambda: state) as beat_now:
        while not stop.is_set():
            state = {**state, "busy": True}
            state = {**work(), "busy": False}
            beat_now()  # a run's outcome shows at once
            stop.wait(interval_s)
