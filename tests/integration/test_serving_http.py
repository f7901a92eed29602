"""The serving process over HTTP: `python -m eightbox.serving` started by the supervisor
(deploy/serving_service.py) against the session stack, under a model name of its own.

A scenario, in file order: with no champion the server is healthy, not ready, and still answers a
lower rung; a champion registered and promoted is served after POST /admin/reload (rung full);
served impressions reach the impressions topic with their features; a click through /events is
acknowledged; and a champion promoted while ~50 requests are in flight is swapped in without
dropping any of them.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from eightbox.deploy.serving_service import base_url, serving
from eightbox.deploy.supervisor import Supervisor
from eightbox.ingest.schema import TOPICS
from eightbox.training import registry

from .conftest import _OFFSET
from .test_api_events import read_until
from .test_funnel_real import FEATURES, world  # noqa: F401  (world: features in Redis, a bundle on disk)

ADMIN = {"Authorization": "Bearer eightbox-development-admin-token"}  # env=test: the development tokens
USER = {"Authorization": "Bearer eightbox-development-user-token"}


def server_settings(settings, port: int, model_name: str, **overrides):
    """Settings for a serving process of its own under `model_name`, reloaded only by the test."""
    return settings.model_copy(update={
        "serving_port": port + _OFFSET, "serving_model_name": f"{model_name}-{uuid.uuid4().hex[:6]}",
        "serving_reload_interval_s": 3600.0,  # only /admin/reload and promote move it here
        "serving_budget_scale": 20.0, "serving_request_timeout_s": 10.0,  # a shared 2-core machine
        "start_timeout_s": 180.0, **overrides})


@contextmanager
def running(settings) -> Iterator[httpx.Client]:
    """`python -m eightbox.serving` under the supervisor, and a client for it; stopped on exit."""
    supervisor = Supervisor(settings, {"serving": serving(settings)})
    supervisor.up(progress=lambda *_: None)
    try:
        with httpx.Client(base_url=base_url(settings), timeout=60) as client:
            yield client
    finally:
        supervisor.down(progress=lambda *_: None)
        assert not supervisor.status()[0].running


@pytest.fixture(scope="module")
def server(world):  # noqa: F811
    settings, bundle_dir, users = world
    settings = server_settings(settings, 28000, "serving-test")
    with running(settings) as client:
        yield settings, client, bundle_dir, users


def _register(settings, bundle_dir) -> str:
    run_id = registry.log_training_run(
        settings, experiment="serving-test", params={}, metrics={}, dataset={}, feature_service="ranker_v1",
        code_version="test", reference={}, bundle_dir=bundle_dir, model_name=settings.serving_model_name)
    version = registry.version_of_run(settings, run_id)
    registry.promote(settings, version, force=True, model_name=settings.serving_model_name)
    return version


def _recommend(client, user: str, k: int = 10) -> dict:
    r = client.post("/recommend", json={"user_id": user, "k": k})
    assert r.status_code == 200, r.text
    return r.json()


def test_without_a_champion_the_server_is_healthy_not_ready_and_answers_a_lower_rung(server):
    _, client, _, users = server
    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["checks"]["models"].startswith("no champion")
    assert ready.json()["checks"]["redis"] == "ok"
    for user in users[:3]:
        assert _recommend(client, user)["rung"] in ("static", "popularity")
    assert client.post("/admin/reload", headers=ADMIN).status_code == 404, "no champion to load"


@pytest.fixture(scope="module")
def champion(server):
    settings, client, bundle_dir, _ = server
    version = _register(settings, bundle_dir)
    assert client.post("/admin/reload").status_code == 401
    assert client.post("/admin/reload", headers=USER).status_code == 403
    r = client.post("/admin/reload", headers=ADMIN)
    assert r.status_code == 200 and r.json()["result"]["version"] == version, r.text
    return version


def test_after_a_champion_is_promoted_and_reloaded_the_full_funnel_serves(server, champion):
    _, client, _, users = server
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.json()
    answers = [_recommend(client, user) for user in users[:6]]
    full = [a for a in answers if a["rung"] == "full"]
    # The first requests warm the user tower and index up; on a busy machine one may still time out.
    assert len(full) >= 4, [(a["rung"], [(s["name"], s["status"]) for s in a["explanation"]["stages"]])
                            for a in answers]
    for a in full:
        assert len(a["items"]) == 10 and a["explanation"]["model_versions"]["model"] == champion
        assert all(0 < item["p_click"] < 1 for item in a["items"])


def test_served_impressions_reach_the_topic_with_the_ranker_features(server, champion):
    settings, client, _, users = server
    answer = next(a for a in (_recommend(client, u) for u in users * 2) if a["rung"] == "full")
    rid, n = answer["request_id"], len(answer["items"])
    records = read_until(settings, TOPICS["impression_served"].name,
                         lambda rs: sum(r.get("request_id") == rid for r in rs) >= n)
    mine = sorted((r for r in records if r.get("request_id") == rid), key=lambda r: r["position"])
    assert [r["item_id"] for r in mine] == [i["item_id"] for i in answer["items"]]
    for r in mine:
        assert r["model_versions"]["model"] == champion and set(r["features"]) <= set(FEATURES)
    assert any(r["features"] for r in mine), "the ranker's features are logged with the impression"


def test_a_click_posted_to_events_is_acknowledged(server, champion):
    _, client, _, users = server
    tag = uuid.uuid4().hex[:8]
    click = {"event_type": "item_clicked", "event_id": f"{tag}-click", "event_time": "2026-11-20T10:00:00Z",
             "user_id": users[0], "item_id": "i1", "request_id": "r1", "position": 0, "surface": "home"}
    r = client.post("/events", json=click)
    assert r.status_code == 202 and r.json()["event_ids"] == [f"{tag}-click"]


def test_a_champion_swapped_in_while_requests_are_in_flight_drops_none(server, champion):
    settings, _, bundle_dir, users = server
    new_version = _register(settings, bundle_dir)  # the alias moves; the server learns at reload

    async def go():
        async with httpx.AsyncClient(base_url=base_url(settings), timeout=120) as client:
            requests = [client.post("/recommend", json={"user_id": users[i % len(users)], "k": 10})
                        for i in range(50)]
            reload = client.post("/admin/reload", headers=ADMIN)
            return await asyncio.gather(reload, *requests)

    reload, *answers = asyncio.run(go())
    assert reload.status_code == 200 and reload.json()["result"]["version"] == new_version, reload.text
    assert [r.status_code for r in answers] == [200] * 50
    served = {r.json()["explanation"]["model_versions"].get("model") for r in answers}
    assert served <= {champion, new_version, None}, served  # None: a request answered by the static rung
    assert served - {None}, "the models answered, not only the static list"
    with httpx.Client(base_url=base_url(settings), timeout=60) as client:
        after = _recommend(client, users[0])
        assert after["explanation"]["model_versions"]["model"] == new_version
