"""The heartbeat of the periodic services (eightbox/periodic.py): what a reader of it sees, when."""

from __future__ import annotations

import json
import os
import signal
import threading

import pytest

from eightbox import periodic


@pytest.fixture
def slow_beats(monkeypatch):
    """Beats a day apart: any beat after the first can only come from an explicit `beat_now`."""
    monkeypatch.setattr(periodic, "BEAT_S", 86400.0)


def read(path):
    return json.loads(path.read_text()) if path.exists() else None


def wait_until(predicate, timeout=10.0):
    done = threading.Event()
    while not predicate() and not done.wait(0.02) and (timeout := timeout - 0.02) > 0:
        pass
    return predicate()


def test_beating_beats_at_once_on_request_and_leaves_no_heartbeat_behind(tmp_path, slow_beats):
    heartbeat, state = tmp_path / "svc.json", {"n": 0}
    with periodic.beating(heartbeat, lambda: dict(state)) as beat_now:
        assert wait_until(lambda: (read(heartbeat) or {}).get("n") == 0)
        state["n"] = 1
        beat_now()
        assert wait_until(lambda: read(heartbeat)["n"] == 1)
        assert read(heartbeat)["pid"] == os.getpid()
    assert not heartbeat.exists()


def test_a_run_shows_in_the_heartbeat_as_soon_as_it_ends_and_a_signal_stops_the_loop(tmp_path, slow_beats):
    heartbeat, runs, seen = tmp_path / "svc.json", [], []
    previous = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)

    def work():
        runs.append(1)
        if len(runs) == 2:  # the first run's outcome was beaten between the runs, not a day later
            seen.append(read(heartbeat))
            os.kill(os.getpid(), signal.SIGTERM)
        return {"runs": len(runs), "error": None}

    try:
        periodic.run_periodic(heartbeat, 0.5, work, initial={"runs": 0})
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])
    assert len(runs) == 2
    assert seen[0]["runs"] == 1 and seen[0]["busy"] is False
    assert not heartbeat.exists()
