"""The loop's controller on the wall clock (training/controller.py) against the real MLflow registry and
the real monitoring lake table: a concept-drift alert written by monitoring retrains at once, the
candidate climbs the ladder across a restart of the controller, and an alert older than the retrain
does not retrain again. Then the wall-clock loop's services (archiver, monitoring, controller) under the
supervisor, as `eightbox up` runs them.

The retrain is the registry tests' tiny ranker registered and proposed for real (the training pipeline
itself is tested in test_pipeline*.py and the closed loop); the ladder's evidence is the test's input,
as in test_ladder.py (the lake-reading evidence is unit-tested apart)."""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from eightbox.deploy.archiver_service import archiver, heartbeat as archiver_beat
from eightbox.deploy.controller_service import controller, heartbeat as controller_beat
from eightbox.deploy.monitoring_service import heartbeat as monitoring_beat, monitoring
from eightbox.deploy.supervisor import Supervisor
from eightbox.ingest import lake
from eightbox.ingest.schema import ImpressionServed, to_wire
from eightbox.monitoring.lake_table import write_result
from eightbox.monitoring.results import CheckResult, MonitoringResult
from eightbox.training import registry
from eightbox.training.controller import Controller, Retrained, state_path
from eightbox.training.promotion import ArmStats, Evidence

from .test_ladder import SHADOW_OK
from .test_registry import THRESHOLDS, aliases, train_and_log, version_tags

T0 = datetime(2024, 6, 3, 9, 0, tzinfo=timezone.utc)  # after the nightly hour: the batch is due at once
LADDER = {"shadow_hours": 2, "canary_hours": 4, "holdback_hours": 6, "min_shadow_requests": 10,
          "min_arm_impressions": 100}
EVIDENCE = {"shadow": Evidence(shadow=SHADOW_OK),
            "canary": Evidence(champion=ArmStats(1000, 100), challenger=ArmStats(300, 31)),
            "champion": Evidence(champion=ArmStats(120, 12), challenger=ArmStats(2000, 210))}


@pytest.fixture
def settings(stack, stack_settings, tmp_path):
    return stack_settings.model_copy(update={
        "home": tmp_path / "home", "serving_model_name": f"controller-{uuid.uuid4().hex[:8]}",
        "controller_ladder": json.dumps(LADDER), "controller_retrain_every_h": 24.0})


def concept_drift(settings, end: datetime, status: str = "act") -> None:
    """What the monitoring service writes when the champion's taste lift fell (its lake table)."""
    check = CheckResult("model", "concept_drift", "uc_affinity_30d", 0.42, status, 0.15, 0.25, "lift 1.31 → 0.76")
    write_result(settings, MonitoringResult(end - timedelta(hours=1), end, settings.serving_model_name, "1", [check]))


def test_a_drift_alert_retrains_at_once_and_the_candidate_climbs_across_a_restart(settings, tmp_path):
    name = settings.serving_model_name
    _, first, _ = train_and_log(settings, tmp_path, name, rows=200, seed=1)
    registry.promote(settings, first, force=True, model_name=name)
    retrained, clock = [], [0.0]
    took = timedelta(seconds=90)  # what each retrain takes on the controller's clock

    def retrain(s, now, why):
        _, version, _ = train_and_log(s, tmp_path, name, rows=800, seed=2)
        passed = registry.propose(s, version, THRESHOLDS, model_name=name).passed
        retrained.append((now, why))
        clock[0] += took.total_seconds()
        return Retrained(version, "test", f"retrained v{version} ({why})", passed)

    def start():  # the real nightly batch: this home's lake has no events, so it has nothing to compute
        return Controller(settings, retrain_fn=retrain, evidence=lambda state, now: EVIDENCE.get(state.rung, Evidence()),
                          monotonic=lambda: clock[0])

    c = start()
    assert c.tick(T0) == [f"nightly batch: {T0.date() - timedelta(days=7)} … {T0.date() - timedelta(days=1)}"]
    assert c.tick(T0 + timedelta(minutes=1)) == []  # the batch ran once; nothing else is due
    concept_drift(settings, T0 - timedelta(hours=1), status="watch")  # watch: not a retrain
    assert c.tick(T0 + timedelta(minutes=2)) == []

    concept_drift(settings, T0 + timedelta(hours=1))
    at = T0 + timedelta(hours=1, minutes=5)
    notes = c.tick(at)
    assert retrained == [(at, "concept drift")], notes
    assert notes[0].startswith("concept drift: ") and "0.420" in notes[0], notes
    second = c.ladder.state.version
    assert c.ladder.state.rung == "shadow" and registry.serving_experiment(settings, name)["shadow"] is True

    c = start()  # a restarted controller carries on the climb from its state file
    assert (c.ladder.state.version, c.ladder.state.rung) == (second, "shadow")
    # Shadow runs 2 hours from when the candidate existed (the retrain took 90 s), not from the tick.
    ready = at + took
    assert c.tick(ready + timedelta(hours=2) - timedelta(seconds=1)) == []
    assert "shadow → canary" in c.tick(ready + timedelta(hours=2))[0]
    assert "canary → champion" in c.tick(ready + timedelta(hours=6))[0]
    assert aliases(settings, name) == {"champion": second, "holdback": first}
    assert "champion → holdback_done" in c.tick(ready + timedelta(hours=12))[0]
    tags = version_tags(settings, name, second)
    assert [tags[f"ladder.{rung}"] for rung in ("challenger", "shadow", "canary", "champion")] == [
        (ready + timedelta(hours=h)).isoformat() for h in (0, 0, 2, 6)]

    # The alert came before the retrain, and the schedule is not due: nothing more to do.
    assert c.tick(at + timedelta(hours=13)) == [] and len(retrained) == 1
    # A day after the retrain: the next night's batch, then the scheduled retrain, which starts the ladder.
    notes = c.tick(at + timedelta(hours=24))
    assert notes[0] == f"nightly batch: {T0.date()}" and [why for _, why in retrained] == ["concept drift", "schedule"]
    state = json.loads(state_path(settings).read_text())
    assert state["last_retrain"] == (at + timedelta(hours=24)).isoformat() and state["ladder"]["rung"] == "shadow"


def wait_for(predicate, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.5)
    return predicate()


def test_eightbox_up_runs_the_wall_clock_loop_archiver_monitoring_and_controller(settings):
    settings = settings.model_copy(update={  # an archiver group of its own: the others' offsets stay theirs
        "controller_interval_s": 2.0, "monitoring_interval_s": 3600.0, "archiver_group": f"up-{uuid.uuid4().hex[:8]}"})
    supervisor = Supervisor(settings, {"archiver": archiver(settings), "monitoring": monitoring(settings),
                                       "controller": controller(settings)})
    try:
        supervisor.up(progress=lambda *_: None)
        assert all(r.healthy for r in supervisor.status())
        # No champion and no traffic: the controller runs its ticks and waits, without an error;
        # the monitoring service reports that there is no champion to check.
        # A beat between ticks (ticks every 2 s, so a beat may well land during one, busy).
        beat = wait_for(lambda: (b := controller_beat(settings)) and "notes" in b and not b["busy"] and b)
        assert beat and beat["error"] is None, controller_beat(settings)
        assert json.loads(state_path(settings).read_text())["started"]
        assert "champion" in wait_for(lambda: (monitoring_beat(settings) or {}).get("error") or "")
        assert archiver_beat(settings)["archived"] >= 0
    finally:
        supervisor.down(progress=lambda *_: None)
    assert controller_beat(settings) is None and monitoring_beat(settings) is None and archiver_beat(settings) is None


def land_impression(settings, at: datetime) -> None:
    """One served impression in the lake, as the archiver writes it (the project's lake writer)."""
    event = ImpressionServed(event_id=f"imp-{uuid.uuid4().hex[:8]}", event_time=at, request_id="r1", user_id="u1",
                             item_id="i1", position=0, surface="home")
    row = {**json.loads(to_wire(event)), "_partition": 0, "_offset": 0}
    lake.write_atomic(lake.to_table("impression_served", [row]),
                      lake.hour_dir(settings.lake_dir, "impression_served", at) / "test+0+0-0.parquet")


def test_a_new_platform_trains_its_first_model_once_impressions_land(settings, tmp_path):
    name, tries = settings.serving_model_name, []

    def retrain(s, now, why):  # the pipeline's promote="if-first": a registry's first model is champion
        _, version, _ = train_and_log(s, tmp_path, name, rows=400, seed=3)
        assert registry.propose(s, version, THRESHOLDS, model_name=name).passed
        registry.promote(s, version, model_name=name)
        tries.append(why)
        return Retrained(version, "test", f"trained v{version} ({why}): the first model, champion", False)

    c = Controller(settings, retrain_fn=retrain, evidence=lambda state, now: Evidence())
    assert c.tick(T0) == [f"nightly batch: {T0.date() - timedelta(days=7)} … {T0.date() - timedelta(days=1)}"]
    assert c.tick(T0 + timedelta(minutes=1)) == []  # no champion, but nothing to learn from yet
    land_impression(settings, T0)
    assert c.tick(T0 + timedelta(minutes=2)) == ["trained v1 (first model): the first model, champion"]
    assert registry.champion_version(settings, name) == "1" and not c.ladder.active
    assert c.tick(T0 + timedelta(hours=2)) == [] and tries == ["first model"]  # now the schedule rules
