"""The serving API's HTTP contract (serving/app.py) with an in-memory funnel: validation, limits,
load shedding, auth, the last-resort rung, metrics. The funnel itself is tested elsewhere."""

from __future__ import annotations

import asyncio
import json
import warnings
from datetime import datetime, timezone

import httpx
import pytest

from eightbox.ingest.schema import ItemClicked, ItemEngaged
from eightbox.settings import Settings

with warnings.catch_warnings():  # starlette's note that httpx2 exists; httpx is what we pin
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from eightbox.serving.app import ServingDeps, create_app

ADMIN, USER = "admin-token-for-tests", "user-token-for-tests"
CLICK = {"event_type": "item_clicked", "event_time": "2026-11-20T10:00:00Z", "user_id": "u1", "item_id": "i1"}


def serving_settings(**overrides) -> Settings:
    return Settings(env="test", serving_admin_tokens=ADMIN, serving_user_tokens=USER, **overrides)


def funnel_answer(k: int, rung: str = "full") -> dict:
    """What the funnel hands the app: the response minus request_id/user_id, features per item."""
    return {
        "rung": rung,
        "items": [{"item_id": f"i{i}", "score": 1.0 - i / 100, "p_click": 0.2, "p_engaged": 0.1,
                   "source": "two_tower", "explored": i == 2, "features": {"item_ctr_7d": 0.25, "pos": float(i)}}
                  for i in range(k)],
        "explanation": {"stages": [
            {"name": "retrieval", "source": "faiss", "candidates_in": 0, "candidates_out": 200,
             "latency_ms": 4.0, "status": "ok"},
            {"name": "ranking", "source": "xgboost", "candidates_in": 200, "candidates_out": k,
             "latency_ms": 9.0, "status": "ok"}],
            "model_versions": {"ranker": "7", "two_tower": "3"}, "experiment_arm": "champion"},
    }


class Fakes:
    """The process's dependencies, in memory; records what the app did with them."""

    def __init__(self):
        self.calls, self.published, self.logged, self.admin = [], [], [], []

    async def recommend(self, user_id, k, context, request_id):
        self.calls.append((user_id, k, context, request_id))
        return funnel_answer(k)

    def deps(self, settings: Settings | None = None, **overrides) -> ServingDeps:
        fields = dict(settings=settings or serving_settings(), recommend=self.recommend,
                      publish=self.published.append, log_impressions=lambda *a, **kw: self.logged.append((*a, kw)),
                      reload=lambda: self.admin.append("reload") or {"champion": "7"},
                      promote=self._promote, rollback=lambda: {"champion": "6"},
                      static=lambda u, k, c, r: funnel_answer(k, rung="static") | {"explanation": {}})
        return ServingDeps(**{**fields, **overrides})

    def _promote(self, version):
        if version == "404":
            raise LookupError(f"no model version {version}")
        return {"champion": version}


@pytest.fixture
def fakes():
    return Fakes()


@pytest.fixture
def client(fakes):
    with TestClient(create_app(fakes.deps())) as c:
        yield c


# --- /recommend --------------------------------------------------------------------------------
def test_recommend_serves_the_funnels_list_and_logs_the_features_it_does_not_show(client, fakes):
    r = client.post("/recommend", json={"user_id": "u7", "k": 5, "context": {"surface": "item_page"}})
    assert r.status_code == 200
    body = r.json()
    assert body["user_id"] == "u7" and body["rung"] == "full" and body["request_id"].startswith("r")
    assert [i["position"] for i in body["items"]] == [0, 1, 2, 3, 4]
    assert all("features" not in i for i in body["items"]) and body["items"][2]["explored"] is True
    assert body["explanation"]["model_versions"] == {"ranker": "7", "two_tower": "3"}
    assert fakes.calls == [("u7", 5, {"surface": "item_page", "exclude_item_ids": [], "attributes": {},
                                      "request_time": None}, body["request_id"])]
    ((response, features, surface, extra),) = fakes.logged
    assert response.request_id == body["request_id"] and surface == "item_page"
    assert features[3] == {"item_ctr_7d": 0.25, "pos": 3.0}
    assert extra == {"teams": None, "served_at": None}, "not interleaved, stamped by the server's clock"


def test_an_interleaved_lists_teams_are_logged_and_not_published(fakes):
    async def interleaved(user_id, k, context, request_id):
        answer = funnel_answer(k)
        for i, item in enumerate(answer["items"]):
            item["team"] = "champion" if i % 2 else "challenger"
        answer["explanation"]["experiment_arm"] = "interleaved"
        return answer

    with TestClient(create_app(fakes.deps(recommend=interleaved))) as client:
        body = client.post("/recommend", json={"user_id": "u7", "k": 3}).json()
    assert body["explanation"]["experiment_arm"] == "interleaved" and all("team" not in i for i in body["items"])
    ((_, _, _, extra),) = fakes.logged
    assert extra["teams"] == ["challenger", "champion", "challenger"]


def test_a_request_time_is_refused_with_422_unless_the_server_trusts_it(fakes):
    body = {"user_id": "u7", "k": 2, "context": {"request_time": "2026-01-05T08:30:00+01:00"}}
    with TestClient(create_app(fakes.deps())) as client:
        r = client.post("/recommend", json=body)
    assert r.status_code == 422 and "request_time" in r.json()["message"] and not fakes.calls
    trusting = serving_settings().model_copy(update={"serving_trust_request_time": True})
    with TestClient(create_app(fakes.deps(trusting))) as client:
        assert client.post("/recommend", json=body).status_code == 200
        naive = {**body, "context": {"request_time": "2026-01-05T08:30:00"}}
        assert client.post("/recommend", json=naive).status_code == 422, "a time without a zone is ambiguous"
    ((_, _, _, extra),) = fakes.logged
    assert extra["served_at"] == datetime(2026, 1, 5, 7, 30, tzinfo=timezone.utc)


def test_k_defaults_to_ten_and_a_longer_funnel_answer_is_cut_to_k(fakes):
    async def too_many(user_id, k, context, request_id):
        return funnel_answer(k + 5)

    with TestClient(create_app(fakes.deps(recommend=too_many))) as c:
        assert len(c.post("/recommend", json={"user_id": "u1"}).json()["items"]) == 10


def test_k_above_max_k_is_refused_with_422_naming_the_field(fakes):
    with TestClient(create_app(fakes.deps(serving_settings(serving_max_k=50)))) as c:
        r = c.post("/recommend", json={"user_id": "u1", "k": 51})
        assert c.post("/recommend", json={"user_id": "u1", "k": 50}).status_code == 200
    assert r.status_code == 422 and r.json()["error"] == "invalid_request"
    assert "body.k" in r.json()["message"] and "50" in r.json()["message"]


@pytest.mark.parametrize("body", [
    {"user_id": ""}, {"user_id": "u" * 129}, {"user_id": "has space"}, {"user_id": 17}, {"k": 3},
    {"user_id": "u1", "k": 0}, {"user_id": "u1", "surprise": 1},
    {"user_id": "u1", "context": {"attributes": {f"a{i}": "x" for i in range(17)}}},
    {"user_id": "u1", "context": {"exclude_item_ids": ["i"] * 201}},
])
def test_bad_recommend_requests_get_422_and_never_reach_the_funnel(client, fakes, body):
    r = client.post("/recommend", json=body)
    assert r.status_code == 422 and r.json()["message"] and not fakes.calls


def test_malformed_json_is_a_422_not_a_server_error(client):
    r = client.post("/recommend", content=b'{"user_id": ', headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"] == "invalid_request"


def test_the_funnels_recommendation_object_converts_to_the_answer_the_app_takes(fakes):
    from dataclasses import dataclass
    from types import SimpleNamespace

    from eightbox.serving.api_models import answer_from_recommendation
    from eightbox.serving.candidates import Candidate

    @dataclass(frozen=True)
    class Stage:  # the funnel's report: counts named n_in/n_out, more fields than the API shows
        name: str
        source: str
        n_in: int
        n_out: int
        n_filtered: int = 0
        latency_ms: float = 0.0
        status: str = "ok"
        budget_ms: float | None = None
        detail: str = ""

    ranked = Candidate("i1", "two_tower", p_click=0.3, p_engaged=0.1, score=0.7, features={"ctr": float("nan")})
    popular = Candidate("i2", "trending", explored=True)
    rec = SimpleNamespace(rung="full", items=(ranked, popular), model_versions={"ranker": "7"},
                          stages=(Stage("source:two_tower", "faiss", 0, 200, 3, 4.2, budget_ms=20.0),))

    async def funnel(user_id, k, context, request_id):
        return answer_from_recommendation(rec)

    with TestClient(create_app(fakes.deps(recommend=funnel))) as c:
        body = c.post("/recommend", json={"user_id": "u1", "k": 2}).json()
    assert [(i["item_id"], i["score"], i["explored"]) for i in body["items"]] == [("i1", 0.7, False), ("i2", None, True)]
    assert body["explanation"]["stages"] == [{"name": "source:two_tower", "source": "faiss", "candidates_in": 0,
                                              "candidates_out": 200, "filtered": 3, "deduped": 0,
                                              "latency_ms": 4.2, "budget_ms": 20.0,
                                              "status": "ok", "detail": ""}]
    assert body["explanation"]["experiment_arm"] == "control" and fakes.logged[0][1][1] == {}


# --- body size ---------------------------------------------------------------------------------
def test_an_oversize_body_is_refused_with_413_by_its_content_length(client, fakes):
    big = json.dumps({"user_id": "u1", "context": {"attributes": {"a": "x" * 70_000}}}).encode()
    r = client.post("/recommend", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"] == "too_large" and "65536" in r.json()["message"]
    assert not fakes.calls


@pytest.mark.parametrize("declared", [None, b"10"], ids=["chunked", "content-length-lies-low"])
def test_an_oversize_body_is_refused_with_413_as_it_streams_in(fakes, declared):
    app = create_app(fakes.deps(serving_settings(serving_max_body_bytes=4096)))
    chunks = [b'{"user_id": "u1", "context": {"surface": "' + b"x" * 1000] + [b"x" * 1000] * 10
    messages = [{"type": "http.request", "body": c, "more_body": True} for c in chunks]
    messages[-1]["more_body"] = False
    headers = [(b"content-type", b"application/json")] + ([(b"content-length", declared)] if declared else [])
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/recommend", "raw_path": b"/recommend", "query_string": b"",
             "headers": headers, "client": ("127.0.0.1", 1), "server": ("test", 80)}
    sent = []

    async def receive():
        return messages.pop(0)

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 413 and json.loads(sent[1]["body"])["error"] == "too_large"
    assert len(messages) == 6, "reading stopped at the limit, not at the end of the body"
    assert not fakes.calls


# --- load shedding -----------------------------------------------------------------------------
def test_beyond_the_concurrency_limit_requests_get_429_at_once_while_admitted_ones_complete(fakes):
    gate, entered = asyncio.Event(), []

    async def slow(user_id, k, context, request_id):
        entered.append(user_id)
        await gate.wait()
        return funnel_answer(k)

    app = create_app(fakes.deps(serving_settings(serving_max_in_flight=2, serving_retry_after_s=3), recommend=slow))

    async def main():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as c:
            admitted = [asyncio.create_task(c.post("/recommend", json={"user_id": f"u{i}", "k": 3})) for i in range(2)]
            while len(entered) < 2:
                await asyncio.sleep(0.001)
            loop = asyncio.get_running_loop()
            started = loop.time()
            shed = await asyncio.gather(*(c.post("/recommend", json={"user_id": "x", "k": 3}) for _ in range(8)))
            shed_seconds = loop.time() - started
            assert not any(t.done() for t in admitted), "the admitted requests are still in the funnel"
            gate.set()
            return await asyncio.gather(*admitted), shed, shed_seconds, await c.get("/metrics")

    admitted, shed, shed_seconds, metrics = asyncio.run(main())
    assert [r.status_code for r in admitted] == [200, 200] and all(len(r.json()["items"]) == 3 for r in admitted)
    assert {r.status_code for r in shed} == {429} and shed_seconds < 1.0
    assert shed[0].headers["retry-after"] == "3" and shed[0].json()["error"] == "overloaded"
    assert 'eightbox_shed_total{endpoint="/recommend"} 8.0' in metrics.text


# --- the last rung -----------------------------------------------------------------------------
async def _raises(*_):
    raise RuntimeError("index file vanished")


async def _malformed(*_):
    return {"rung": "full", "items": [{"item_id": "i1", "score": float("nan")}]}


async def _hangs(*_):
    await asyncio.sleep(10)


@pytest.mark.parametrize("broken, reason", [(_raises, "error"), (_malformed, "error"), (_hangs, "timeout")])
def test_a_failing_funnel_is_answered_by_the_static_rung_never_a_5xx(fakes, broken, reason):
    settings = serving_settings(serving_request_timeout_s=0.05)
    with TestClient(create_app(fakes.deps(settings, recommend=broken))) as c:
        r = c.post("/recommend", json={"user_id": "u1", "k": 4})
        metrics = c.get("/metrics").text
    assert r.status_code == 200 and r.json()["rung"] == "static" and len(r.json()["items"]) == 4
    assert r.json()["explanation"]["stages"][0] | {"latency_ms": 0, "detail": ""} == {
        "name": "funnel", "source": None, "candidates_in": 0, "candidates_out": 0, "filtered": 0, "deduped": 0,
        "latency_ms": 0,
        "budget_ms": None, "status": reason, "detail": ""}
    assert r.json()["explanation"]["stages"][0]["detail"] in ("RuntimeError", "ValidationError", "no answer within 0.05 s")
    assert f'eightbox_recommend_failures_total{{reason="{reason}"}} 1.0' in metrics
    assert 'eightbox_recommend_rung_total{rung="static"} 1.0' in metrics


def _static_raises(*_):
    raise OSError("static list file missing")


@pytest.mark.parametrize("static", [None, _static_raises], ids=["no-static-list", "static-list-fails"])
def test_without_a_working_static_list_a_failing_funnel_answers_503_with_retry_after(fakes, static):
    with TestClient(create_app(fakes.deps(recommend=_raises, static=static))) as c:
        r = c.post("/recommend", json={"user_id": "u1"})
    assert r.status_code == 503 and r.json()["error"] == "unavailable" and r.headers["retry-after"] == "1"


def test_internal_keys_the_funnel_adds_are_dropped_not_published_and_not_an_error(fakes):
    async def chatty(user_id, k, context, request_id):
        answer = funnel_answer(k)
        answer["shadow"] = {"challenger_scores": [0.1]}
        answer["items"][0]["team"] = "A"
        answer["explanation"]["stages"][0]["n_deduped"] = 20
        return answer

    with TestClient(create_app(fakes.deps(recommend=chatty))) as c:
        body = c.post("/recommend", json={"user_id": "u1", "k": 2}).json()
    assert body["rung"] == "full" and "shadow" not in body and "team" not in body["items"][0]
    assert "n_deduped" not in body["explanation"]["stages"][0]


# --- /events -----------------------------------------------------------------------------------
def test_one_event_or_a_list_is_validated_by_the_ingest_contract_and_published(client, fakes):
    engaged = {**CLICK, "event_type": "item_engaged", "kind": "like", "event_id": "e-2"}
    assert client.post("/events", json={**CLICK, "event_id": "e-1"}).json() == {"accepted": 1, "event_ids": ["e-1"]}
    r = client.post("/events", json=[{**CLICK, "event_id": "e-3"}, engaged])
    assert r.status_code == 202 and r.json()["event_ids"] == ["e-3", "e-2"]
    assert [type(e) for e in fakes.published] == [ItemClicked, ItemClicked, ItemEngaged]  # the ingest classes


@pytest.mark.parametrize("body", [
    {**CLICK, "event_type": "impression_served"},  # only the server writes impressions
    [CLICK, {**CLICK, "user_id": None}],  # one bad event: none is sent
    [CLICK] * 101,  # over serving_max_events_per_request
    [], {**CLICK, "schema_version": 2}, {**CLICK, "event_time": "2026-11-20T10:00:00"},  # naive time
    {**CLICK, "position": -1}, {**CLICK, "extra": "field"},
])
def test_an_invalid_event_batch_gets_422_and_nothing_is_published(client, fakes, body):
    r = client.post("/events", json=body)
    assert r.status_code == 422 and r.json()["message"] and fakes.published == []


def test_events_the_broker_does_not_acknowledge_get_503_so_the_client_retries(fakes):
    class Unacked:
        def get(self, timeout):
            raise TimeoutError("no ack within the timeout")

    with TestClient(create_app(fakes.deps(publish=lambda event: Unacked()))) as c:
        r = c.post("/events", json=CLICK)
    assert r.status_code == 503 and "not acknowledged" in r.json()["message"]


# --- admin -------------------------------------------------------------------------------------
@pytest.mark.parametrize("path, body", [("/admin/reload", None), ("/admin/promote", {"version": "8"}),
                                        ("/admin/rollback", None)])
def test_admin_endpoints_want_an_admin_token_401_without_403_with_a_users(client, path, body):
    without = client.post(path, json=body)
    unknown = client.post(path, json=body, headers={"Authorization": "Bearer guessed"})
    basic = client.post(path, json=body, headers={"Authorization": f"Basic {ADMIN}"})
    user = client.post(path, json=body, headers={"Authorization": f"Bearer {USER}"})
    admin = client.post(path, json=body, headers={"Authorization": f"Bearer {ADMIN}"})
    assert [r.status_code for r in (without, unknown, basic, user, admin)] == [401, 401, 401, 403, 200]
    assert without.headers["www-authenticate"] == "Bearer" and user.json()["error"] == "forbidden"
    assert admin.json()["action"] == path.rsplit("/", 1)[1]


def test_admin_results_and_refusals_come_back_as_json(client, fakes):
    auth = {"Authorization": f"Bearer {ADMIN}"}
    assert client.post("/admin/promote", json={"version": "9"}, headers=auth).json() == {
        "action": "promote", "result": {"champion": "9"}}
    missing = client.post("/admin/promote", json={"version": "404"}, headers=auth)
    assert missing.status_code == 404 and "no model version 404" in missing.json()["message"]
    assert client.post("/admin/promote", json={"version": "../x"}, headers=auth).status_code == 422


def test_production_refuses_the_development_tokens_and_without_tokens_lets_nobody_in():
    dev_admin, dev_user = Settings(env="test").admin_tokens, Settings(env="test").user_tokens
    assert len(dev_admin) == len(dev_user) == 1 and dev_admin != dev_user
    with pytest.raises(ValueError, match="EIGHTBOX_SERVING_ADMIN_TOKENS"):
        Settings(env="production", pii_key="real", serving_admin_tokens=f"a-real,{min(dev_admin)}")
    with pytest.raises(ValueError, match="EIGHTBOX_SERVING_USER_TOKENS"):
        Settings(env="production", pii_key="real", serving_user_tokens=min(dev_user))
    assert Settings(env="production", pii_key="real").admin_tokens == frozenset()
    s = Settings(env="production", pii_key="real", serving_admin_tokens="a1, a2", serving_user_tokens="u1")
    assert s.admin_tokens == {"a1", "a2"} and s.user_tokens == {"u1"} and "a1" not in repr(s)


# --- operations --------------------------------------------------------------------------------
def test_health_and_readiness(fakes):
    checks = {"ready": False, "checks": {"models": "no champion loaded", "kafka": "ok"}}
    with TestClient(create_app(fakes.deps(readiness=lambda: checks))) as c:
        assert c.get("/healthz").json() == {"status": "alive"}
        not_ready = c.get("/readyz")
        checks["ready"] = True
        ready = c.get("/readyz")
    assert not_ready.status_code == 503 and not_ready.json()["checks"]["models"] == "no champion loaded"
    assert ready.status_code == 200 and ready.json()["ready"] is True


def test_metrics_count_requests_rungs_and_stage_latency_in_a_registry_per_app(fakes):
    with TestClient(create_app(fakes.deps())) as c, TestClient(create_app(fakes.deps())) as other:
        for _ in range(3):
            c.post("/recommend", json={"user_id": "u1"})
        c.post("/recommend", json={"user_id": ""})
        c.get("/no/such/path")
        text = c.get("/metrics").text
        assert 'eightbox_http_requests_total{endpoint="/recommend"' not in other.get("/metrics").text
    assert 'eightbox_http_requests_total{endpoint="/recommend",method="POST",status="200"} 3.0' in text
    assert 'eightbox_http_requests_total{endpoint="/recommend",method="POST",status="422"} 1.0' in text
    assert 'eightbox_http_requests_total{endpoint="other",method="GET",status="404"} 1.0' in text
    assert 'eightbox_recommend_rung_total{rung="full"} 3.0' in text
    assert 'eightbox_funnel_stage_duration_seconds_count{stage="ranking"} 3.0' in text
    assert 'eightbox_http_request_duration_seconds_count{endpoint="/recommend"} 4.0' in text
    assert "eightbox_admission_recommend_max_in_flight 64.0" in text


def test_the_openapi_document_declares_every_answer_the_api_gives(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert set(paths["/recommend"]["post"]["responses"]) == {"200", "400", "413", "422", "429", "503"}
    assert {"401", "403"} <= set(paths["/admin/reload"]["post"]["responses"])
    schema = paths["/recommend"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/RecommendRequest"}
    assert client.get("/openapi.json").json()["components"]["schemas"]["RecommendRequest"][
        "properties"]["k"]["maximum"] == 100
