"""Experiments through the real serving process (`python -m eightbox.serving` against the session stack):
a champion and a challenger registered in MLflow, the experiment set as registry tags, the server
reloaded over HTTP, then requests for distinct users.

In file order: a 50/50 A/B with shadow scoring splits users by the assignment hash, logs every
impression with its arm and versions, and publishes a `ShadowScored` for each champion-arm request
(which the lake archiver lands); interleaving logs each item's team; a trusted request time stamps
the impressions; moving the tags back to zero sends everyone to the champion; and after a promotion
the old champion serves the holdback share.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from datetime import datetime, timezone

import httpx
import pytest
from mlflow import MlflowClient

from eightbox.deploy.serving_service import base_url
from eightbox.ingest import lake
from eightbox.ingest.archiver import LakeArchiver
from eightbox.ingest.schema import TOPICS
from eightbox.serving.experiments import ExperimentConfig
from eightbox.training import registry

from .test_api_events import read_until
from .test_funnel_real import world  # noqa: F401  (world: features in Redis, a bundle on disk)
from .test_serving_http import running, server_settings

ADMIN = {"Authorization": "Bearer eightbox-development-admin-token"}  # env=test: the development tokens
IMPRESSIONS, SHADOW = TOPICS["impression_served"].name, TOPICS["shadow_scored"].name


def _register(settings, bundle_dir, alias: str) -> str:
    name = settings.serving_model_name
    run_id = registry.log_training_run(
        settings, experiment="experiments-test", params={}, metrics={}, dataset={}, feature_service="ranker_v1",
        code_version="test", reference={}, bundle_dir=bundle_dir, model_name=name)
    version = registry.version_of_run(settings, run_id)
    if alias == registry.CHAMPION:
        registry.promote(settings, version, force=True, model_name=name)
    else:  # the offline gate is not under test here: the alias is set as the gate would set it
        MlflowClient(settings.mlflow_uri, settings.mlflow_uri).set_registered_model_alias(name, alias, version)
    return version


@pytest.fixture(scope="module")
def server(world):  # noqa: F811
    settings, bundle_dir, _ = world
    settings = server_settings(settings, 28010, "experiments-test", serving_trust_request_time=True,
                               serving_shadow_max_in_flight=64)
    champion = _register(settings, bundle_dir, registry.CHAMPION)
    challenger = _register(settings, bundle_dir, registry.CHALLENGER)
    with running(settings) as client:
        yield settings, client, champion, challenger


def _experiment(server, **tags) -> ExperimentConfig:
    """Set the experiment tags, reload the server, and return the config it now assigns by."""
    settings, client, _, challenger = server
    exp = registry.set_serving_experiment(settings, settings.serving_model_name, **tags)
    r = client.post("/admin/reload", headers=ADMIN)
    assert r.status_code == 200 and r.json()["result"]["challenger"] == challenger, r.text
    assert r.json()["result"]["experiment"] == exp
    return ExperimentConfig.from_tags(exp)


def _recommend_all(settings, users: list[str], context: dict | None = None) -> list[dict]:
    """One /recommend per user, eight at a time (a shared machine)."""
    async def go():
        async with httpx.AsyncClient(base_url=base_url(settings), timeout=120) as client:
            answers = []
            for i in range(0, len(users), 8):
                batch = [client.post("/recommend", json={"user_id": u, "k": 10, "context": context or {}})
                         for u in users[i:i + 8]]
                answers += await asyncio.gather(*batch)
        return answers

    answers = asyncio.run(go())
    assert [r.status_code for r in answers] == [200] * len(users), [r.text for r in answers if r.status_code != 200]
    return [r.json() for r in answers]


def _logged(settings, topic: str, request_ids: set[str], want_per_request: int = 1) -> dict[str, list[dict]]:
    """The records of `topic` for `request_ids`, grouped by request, once each has `want_per_request`."""
    def grouped(records):
        out: dict[str, list[dict]] = {}
        for r in records:
            if r.get("request_id") in request_ids:
                out.setdefault(r["request_id"], []).append(r)
        return out

    records = read_until(settings, topic, lambda rs: len(grouped(rs)) == len(request_ids) and all(
        len(v) >= want_per_request for v in grouped(rs).values()), timeout_s=90)
    return grouped(records)


@pytest.fixture(scope="module")
def ab(server):
    """200 distinct users under a 50/50 A/B with shadow scoring: (config, answers by user)."""
    settings, client, _, _ = server
    assert client.get("/readyz").status_code == 200, client.get("/readyz").text
    config = _experiment(server, challenger_share=0.5, shadow=True, interleave_share=0.0, salt="ab-test")
    users = [f"exp-{uuid.uuid4().hex[:8]}-{i}" for i in range(200)]
    return config, dict(zip(users, _recommend_all(settings, users)))


def test_users_split_near_half_and_half_each_served_by_its_arms_model(server, ab):
    _, _, champion, challenger = server
    config, answers = ab
    arms = Counter(a["explanation"]["experiment_arm"] for a in answers.values())
    assert set(arms) == {"champion", "challenger"} and abs(arms["champion"] - 100) < 28, arms  # 4 sigma
    versions = {"champion": champion, "challenger": challenger}
    for user, a in answers.items():
        arm = a["explanation"]["experiment_arm"]
        assert arm == config.assign(user).label, "the server assigns by the registry's experiment"
        assert a["explanation"]["model_versions"]["model"] == versions[arm]
    assert sum(a["rung"] == "full" for a in answers.values()) >= 180, Counter(a["rung"] for a in answers.values())


def test_impressions_carry_the_arm_and_versions_that_served_them(server, ab):
    settings, *_ = server
    _, answers = ab
    by_request = {a["request_id"]: a for a in answers.values()}
    logged = _logged(settings, IMPRESSIONS, set(by_request), want_per_request=10)
    for rid, records in logged.items():
        ex = by_request[rid]["explanation"]
        assert {r["experiment_arm"] for r in records} == {ex["experiment_arm"]}
        assert {r["model_versions"]["model"] for r in records} == {ex["model_versions"]["model"]}
        assert all("team" not in r for r in records), "teams only on interleaved lists"


def test_each_champion_request_is_shadowed_by_the_challenger_on_its_own_topic(server, ab):
    settings, client, champion, challenger = server
    _, answers = ab
    served = {a["request_id"]: a for a in answers.values() if a["explanation"]["experiment_arm"] == "champion"}
    logged = _logged(settings, SHADOW, set(served))
    assert set(logged) == set(served)
    for rid, (event,) in logged.items():
        assert (event["champion_version"], event["challenger_version"]) == (champion, challenger)
        assert event["champion_item_ids"] == [i["item_id"] for i in served[rid]["items"]]
        assert len(event["challenger_item_ids"]) == 10 and event["challenger_latency_ms"] > 0
    others = {a["request_id"] for a in answers.values()} - set(served)
    assert not others & {r["request_id"] for r in read_until(settings, SHADOW, lambda rs: False, timeout_s=3)}
    metrics = client.get("/metrics").text
    assert "eightbox_shadow_dropped 0.0" in metrics, [m for m in metrics.splitlines() if "shadow_" in m]


def test_the_lake_archiver_lands_shadow_events_in_their_own_table(server, ab, tmp_path):
    settings, *_ = server
    _, answers = ab
    shadowed = {a["request_id"] for a in answers.values() if a["explanation"]["experiment_arm"] == "champion"}
    mine = settings.model_copy(update={"lake_dir": tmp_path / "lake", "archiver_group": f"a-{uuid.uuid4().hex[:6]}"})
    LakeArchiver(mine).run(idle_exit_s=5.0)
    table = lake.read_events(mine.lake_dir, "shadow_scored")
    assert shadowed <= set(table.column("request_id").to_pylist())
    impressions = lake.read_events(mine.lake_dir, "impression_served")
    assert not shadowed & {r for r, arm in zip(impressions.column("request_id").to_pylist(),
                                                impressions.column("experiment_arm").to_pylist())
                           if arm != "champion"}, "a shadowed request's impressions are the champion's alone"


def test_interleaved_requests_log_each_items_team(server, ab):
    settings, *_ = server
    _experiment(server, challenger_share=0.5, shadow=False, interleave_share=1.0)
    users = [f"int-{uuid.uuid4().hex[:8]}-{i}" for i in range(16)]
    answers = _recommend_all(settings, users)
    interleaved = {a["request_id"]: a for a in answers if a["explanation"]["experiment_arm"] == "interleaved"}
    assert len(interleaved) >= 12, Counter(a["explanation"]["experiment_arm"] for a in answers)
    logged = _logged(settings, IMPRESSIONS, set(interleaved), want_per_request=10)
    teams = Counter(r["team"] for records in logged.values() for r in records)
    assert set(teams) == {"champion", "challenger"} and min(teams.values()) > 30, teams
    for rid, records in logged.items():
        assert sorted(r["item_id"] for r in records) == sorted(i["item_id"] for i in interleaved[rid]["items"])
        assert "challenger.model" in records[0]["model_versions"]


def test_a_trusted_request_time_stamps_the_impressions(server, ab):
    settings, *_ = server
    when = datetime(2026, 1, 5, 8, 30, tzinfo=timezone.utc)
    (answer,) = _recommend_all(settings, [f"clock-{uuid.uuid4().hex[:8]}"], {"request_time": when.isoformat()})
    (records,) = _logged(settings, IMPRESSIONS, {answer["request_id"]}, want_per_request=10).values()
    assert {datetime.fromisoformat(r["event_time"].replace("Z", "+00:00")) for r in records} == {when}


def test_moving_the_tags_back_to_zero_sends_everyone_to_the_champion(server, ab):
    settings, _, champion, _ = server
    _experiment(server, challenger_share=0.0, interleave_share=0.0, shadow=False)
    answers = _recommend_all(settings, [f"back-{uuid.uuid4().hex[:8]}-{i}" for i in range(40)])
    assert {a["explanation"]["experiment_arm"] for a in answers} == {"champion"}
    assert {a["explanation"]["model_versions"]["model"] for a in answers} == {champion}


def test_a_promotion_holds_the_old_champion_back_for_the_holdback_share(server, ab):
    settings, client, champion, challenger = server
    name = settings.serving_model_name
    registry.promote(settings, challenger, model_name=name)  # the old champion takes alias holdback
    exp = registry.set_serving_experiment(settings, name, challenger_share=0.0, holdback_share=0.5, salt="hb")
    r = client.post("/admin/reload", headers=ADMIN)
    assert r.status_code == 200, r.text
    result = r.json()["result"]
    assert (result["version"], result["holdback"], result["challenger"]) == (challenger, champion, None)
    config = ExperimentConfig.from_tags(exp)
    users = [f"hold-{uuid.uuid4().hex[:8]}-{i}" for i in range(60)]
    answers = _recommend_all(settings, users)
    versions = {"champion": challenger, "holdback": champion}
    for user, a in zip(users, answers):
        arm = a["explanation"]["experiment_arm"]
        assert arm == config.assign(user).label and a["explanation"]["model_versions"]["model"] == versions[arm]
    assert {a["explanation"]["experiment_arm"] for a in answers} == {"champion", "holdback"}
