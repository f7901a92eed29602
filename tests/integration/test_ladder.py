"""The promotion ladder on the real MLflow registry: every rung moves the aliases and serving's
experiment tags and is recorded on the version; a canary that breaks its guardrail is rejected and
loses its traffic; a promoted champion worse than its holdback is rolled back.

The evidence is the test's input (the lake-reading evidence is unit-tested apart); the registry is real."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest

from eightbox.training import registry
from eightbox.training.ladder_runner import LadderRunner
from eightbox.training.promotion import ArmStats, Evidence, LadderConfig, ShadowStats

from .test_registry import THRESHOLDS, aliases, train_and_log, version_tags

T0 = datetime(2024, 1, 5, tzinfo=timezone.utc)
CFG = LadderConfig(shadow_hours=2, canary_hours=4, holdback_hours=6, min_shadow_requests=10, min_arm_impressions=100)
SHADOW_OK = ShadowStats(requests=40, score_psi=0.1, challenger_tail_ms=10, champion_tail_ms=9, distinct_scores=30)


@pytest.fixture
def settings(stack, stack_settings):
    return stack_settings


def hours(h: float) -> datetime:
    return T0 + timedelta(hours=h)


def champion_and_challenger(settings, tmp_path):
    name = f"ladder-run-{uuid.uuid4().hex[:8]}"
    _, first, _ = train_and_log(settings, tmp_path, name, rows=200, seed=1)
    registry.promote(settings, first, force=True, model_name=name)
    _, second, _ = train_and_log(settings, tmp_path, name, rows=800, seed=2)
    assert registry.propose(settings, second, THRESHOLDS, model_name=name).passed
    return name, first, second


def runner(settings, name, evidence):
    return LadderRunner(settings, lambda state, now: evidence.get(state.rung, Evidence()), CFG, model_name=name)


def test_a_good_challenger_climbs_shadow_canary_champion_and_ends_its_holdback(settings, tmp_path):
    name, first, second = champion_and_challenger(settings, tmp_path)
    ev = {"shadow": Evidence(shadow=SHADOW_OK),
          "canary": Evidence(champion=ArmStats(1000, 100), challenger=ArmStats(300, 31)),
          "champion": Evidence(champion=ArmStats(120, 12), challenger=ArmStats(2000, 210))}
    r = runner(settings, name, ev)
    r.start(second, hours(0))
    assert r.step(hours(0)).action == "start_shadow"
    assert registry.serving_experiment(settings, name)["shadow"] is True
    assert r.step(hours(1)).action == "wait"
    assert r.step(hours(2)).action == "start_canary"
    exp = registry.serving_experiment(settings, name)
    assert (exp["shadow"], exp["challenger_share"]) == (False, CFG.canary_share)
    assert r.step(hours(6)).action == "promote"
    assert aliases(settings, name) == {"champion": second, "holdback": first}
    assert registry.serving_experiment(settings, name)["holdback_share"] == CFG.holdback_share
    assert r.step(hours(12)).action == "end_holdback"
    assert registry.serving_experiment(settings, name)["holdback_share"] == 0.0
    tags = version_tags(settings, name, second)
    assert [tags[f"ladder.{rung}"] for rung in ("challenger", "shadow", "canary", "champion", "holdback_done")] == [
        hours(h).isoformat() for h in (0, 0, 2, 6, 12)]


def test_a_canary_that_breaks_its_guardrail_is_rejected_and_loses_its_traffic(settings, tmp_path):
    name, first, second = champion_and_challenger(settings, tmp_path)
    ev = {"shadow": Evidence(shadow=SHADOW_OK),
          "canary": Evidence(champion=ArmStats(1000, 100), challenger=ArmStats(300, 15))}  # CTR halved
    r = runner(settings, name, ev)
    r.start(second, hours(0))
    r.step(hours(0)), r.step(hours(2))
    d = r.step(hours(3))
    assert d.action == "reject" and "below champion" in d.reasons[0]
    assert aliases(settings, name) == {"champion": first}
    assert registry.serving_experiment(settings, name)["challenger_share"] == 0.0
    tags = version_tags(settings, name, second)
    assert tags["ladder.rung"] == "rolled_back" and "CTR" in tags["ladder.rolled_back.note"]


def test_a_promoted_champion_worse_than_its_holdback_is_rolled_back(settings, tmp_path):
    name, first, second = champion_and_challenger(settings, tmp_path)
    ev = {"shadow": Evidence(shadow=SHADOW_OK),
          "canary": Evidence(champion=ArmStats(1000, 100), challenger=ArmStats(300, 30)),
          "champion": Evidence(champion=ArmStats(200, 30), challenger=ArmStats(3000, 240))}
    r = runner(settings, name, ev)
    r.start(second, hours(0))
    for h in (0, 2, 6):
        r.step(hours(h))
    assert registry.champion_version(settings, name) == second
    assert r.step(hours(7)).action == "rollback"
    assert registry.champion_version(settings, name) == first
    assert registry.serving_experiment(settings, name)["holdback_share"] == 0.0
