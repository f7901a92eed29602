"""Faults and overload through the real serving process (`python -m eightbox.serving`, supervised),
one server for the module, in file order:

- Overload: beyond `serving_max_in_flight` concurrent requests the excess gets 429 with
  Retry-After at once, while every admitted request is a full answer within the funnel's budget.
- Redis stopped: every answer is a 200 on the fallback rung whose stages say why (history and
  features failing, then short-circuited by the open "redis" breaker, the ranker skipped for want of
  features); /readyz says Redis is unreachable. Once Redis is back, the breaker stays open for its
  `open_seconds`, lets a trial through (half-open) and the full funnel serves again.
- The champion without its ANN index, then without its ranker: fallback, with the stage that
  explains it, and no 5xx.

The server's breakers have the default policy (settings do not expose it): the "redis" breaker
judges its last 50 calls of the last 30 s (at least 10), opens at a 50 % error rate and stays open
5 s. Each request makes two Redis calls, so 13 requests with Redis down trip it even after a window
full of successes.
"""

from __future__ import annotations

import asyncio
import math
import shutil
import statistics
import time
from pathlib import Path

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from eightbox.deploy.serving_service import base_url
from eightbox.serving.bootstrap import funnel_config
from eightbox.serving.breaker import BreakerPolicy

from .test_funnel_real import world  # noqa: F401  (world: features in Redis, a bundle on disk)
from .test_serving_http import ADMIN, _register, running, server_settings

MAX_IN_FLIGHT = 3
POLICY = BreakerPolicy()  # the server's "redis" breaker
# Requests (2 failed Redis calls each) that trip it whatever successes fill its window beforehand.
TRIP_AFTER = math.ceil(POLICY.window_calls * POLICY.error_rate / 2)
N = 12  # requests per fault
PROBES = 30  # single requests sent while the in-flight limit is reached


@pytest.fixture(scope="module")
def server(world):  # noqa: F811
    settings, bundle_dir, users = world
    settings = server_settings(settings, 28030, "faults-test", serving_max_in_flight=MAX_IN_FLIGHT)
    _register(settings, bundle_dir)  # the champion exists before start: the bootstrap loads it
    with running(settings) as client:
        yield settings, client, bundle_dir, users


def _without(bundle_dir: Path, tmp_path: Path, component: str) -> Path:
    """A copy of the bundle with `component`'s folder gone (its manifest entry stays, as after a bad copy)."""
    copy = tmp_path / "bundle"
    shutil.copytree(bundle_dir, copy)
    shutil.rmtree(copy / component)
    return copy


def _serve(settings, bundle: Path) -> None:
    """Make `bundle` (a directory) the champion and have the server load it now."""
    version = _register(settings, bundle)
    with httpx.Client(base_url=base_url(settings), timeout=120) as client:
        r = client.post("/admin/reload", headers=ADMIN)
    assert r.status_code == 200 and r.json()["result"]["version"] == version, r.text


def _ask(client, user: str) -> tuple[float, dict, float]:
    """(sent at, the 200 answer, received at), monotonic seconds: any other status fails the test."""
    sent = time.monotonic()
    r = client.post("/recommend", json={"user_id": user, "k": 10})
    assert r.status_code == 200, (r.status_code, r.text)
    return sent, r.json(), time.monotonic()


def _stages(answer: dict) -> dict[str, dict]:
    return {s["name"]: s for s in answer["explanation"]["stages"]}


def _why(answer: dict) -> list:
    return [answer["rung"], [(s["name"], s["status"], s["detail"]) for s in answer["explanation"]["stages"]]]


def _metrics(client) -> dict[tuple, float]:
    """Every sample of /metrics: (name, sorted labels) → value."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(client.get("/metrics").text) for s in f.samples}


def _no_5xx(client) -> None:
    """No /recommend answer of this server so far was a 5xx."""
    answered = {dict(k)["status"]: v for (name, k), v in _metrics(client).items()
                if name == "eightbox_http_requests_total" and dict(k)["endpoint"] == "/recommend"}
    assert answered and not [s for s in answered if s.startswith("5")], answered


def test_the_champion_serves_the_full_funnel(server):
    _, client, _, users = server
    answers = [_ask(client, u)[1] for u in users[:4]]
    assert [a["rung"] for a in answers].count("full") >= 3, [_why(a) for a in answers]
    deadline = time.monotonic() + 30  # the popularity board's first refresh (every 5 s) feeds trending
    while _stages(_ask(client, users[0])[1])["source:trending"]["candidates_out"] == 0:
        assert time.monotonic() < deadline, "no trending snapshot within 30 s"
        time.sleep(0.5)


def test_beyond_the_in_flight_limit_the_excess_is_refused_fast_and_the_admitted_are_served(server):
    settings, client, _, users = server
    budget_s = funnel_config(settings).total_timeout_ms / 1000.0
    results: list[tuple[httpx.Response, float]] = []

    async def one(c: httpx.AsyncClient, user: str) -> None:
        started = time.perf_counter()
        r = await c.post("/recommend", json={"user_id": user, "k": 10})
        results.append((r, time.perf_counter() - started))

    async def load() -> None:
        """MAX_IN_FLIGHT clients back to back keep every slot taken while one more probes, one request
        at a time: few clients, so the latencies measure the server rather than the client's queue."""
        probes_done = asyncio.Event()
        async with httpx.AsyncClient(base_url=base_url(settings), timeout=60) as c:
            async def busy(w: int) -> None:
                while not probes_done.is_set():
                    await one(c, users[w % len(users)])

            async def probe() -> None:
                await asyncio.sleep(0.2)  # the busy clients are under way
                for i in range(PROBES):
                    await one(c, users[i % len(users)])
                    await asyncio.sleep(0.01)
                probes_done.set()

            await asyncio.gather(probe(), *(busy(w) for w in range(MAX_IN_FLIGHT)))

    before = _metrics(client)
    asyncio.run(load())
    admitted = [(r, s) for r, s in results if r.status_code == 200]
    shed = [(r, s) for r, s in results if r.status_code == 429]
    assert len(admitted) + len(shed) == len(results), [r.status_code for r, _ in results]
    assert len(admitted) >= MAX_IN_FLIGHT and len(shed) >= PROBES // 3, (len(admitted), len(shed))
    for r, _ in shed:
        assert r.headers["Retry-After"] == str(settings.serving_retry_after_s) and r.json()["error"] == "overloaded"
    for r, seconds in admitted:
        assert r.json()["rung"] == "full" and seconds < budget_s, (seconds, _why(r.json()))
    # Refused without doing the work: far faster than an admitted answer (a ratio: the machine is noisy).
    fast, slow = statistics.median(s for _, s in shed), statistics.median(s for _, s in admitted)
    assert fast < slow / 3, f"median 429 in {fast * 1e3:.1f} ms vs 200 in {slow * 1e3:.1f} ms"
    after = _metrics(client)
    gauge = lambda m, name: m[(f"eightbox_admission_recommend_{name}", ())]  # noqa: E731
    assert gauge(after, "peak") == MAX_IN_FLIGHT and gauge(after, "in_flight") == 0
    assert gauge(after, "shed") - gauge(before, "shed") == len(shed)
    _no_5xx(client)


def test_with_redis_stopped_answers_fall_back_the_breaker_opens_and_recovers_after_its_interval(server, stack):
    settings, client, _, users = server
    stack.stop("redis")
    try:
        down = [_ask(client, users[i % len(users)]) for i in range(TRIP_AFTER + N)]
        ready = client.get("/readyz")
    finally:
        stack.start("redis", progress=lambda *_: None)
    assert redis.Redis.from_url(settings.redis_address, socket_timeout=5).ping()  # back for the other tests
    assert ready.status_code == 503 and ready.json()["checks"]["redis"].startswith("unreachable"), ready.text
    for _, answer, _ in down:
        stages = _stages(answer)
        assert answer["rung"] == "fallback" and len(answer["items"]) == 10, _why(answer)
        assert stages["history"]["status"] in ("error", "timeout", "breaker_open"), _why(answer)
        assert stages["features"]["status"] in ("error", "timeout", "breaker_open"), _why(answer)
        assert stages["rank"]["status"] == "skipped" and stages["rank"]["detail"] == "no features"
        assert stages["source:trending"]["candidates_out"] > 0, "trending comes from the in-memory snapshot"
        assert all(item["p_click"] is None and item["score"] is None for item in answer["items"])
    short = [i for i, (_, a, _) in enumerate(down) if _stages(a)["history"]["status"] == "breaker_open"]
    assert short, f"the redis breaker never opened: {[_why(a) for _, a, _ in down]}"
    assert short[0] >= 1 and _stages(down[short[0]][1])["history"]["detail"] == "redis breaker open"
    # It opened during the request before the first short-circuited one, so not before that one was
    # sent: no answer received within POLICY.open_seconds of that send may have called Redis.
    tripped_after = down[short[0] - 1][0]
    for _, answer, received in down[short[0]:]:
        if received < tripped_after + POLICY.open_seconds:
            assert _stages(answer)["history"]["status"] == "breaker_open", _why(answer)
    metrics = _metrics(client)
    assert metrics[("eightbox_funnel_stage_total", (("stage", "history"), ("status", "breaker_open")))] >= 1
    # The breaker's gauge: 2 open, 1 half-open (its interval may have passed by now), 0 closed.
    assert metrics[("eightbox_breaker_redis", ())] >= 1 and metrics[("eightbox_breaker_ranker", ())] == 0

    # Redis is back: after the open interval a trial call closes the breaker and the funnel is full again.
    after, deadline = [], time.monotonic() + 60
    while not after or after[-1][1]["rung"] != "full":
        assert time.monotonic() < deadline, f"not full again within 60 s: {[_why(a) for _, a, _ in after]}"
        after.append(_ask(client, users[0]))
        time.sleep(0.2)
    _, recovered, received = after[-1]
    assert _stages(recovered)["history"]["status"] == "ok" and _stages(recovered)["features"]["status"] == "ok"
    assert received - tripped_after >= POLICY.open_seconds, "the breaker let Redis be called before its open interval"
    for _, answer, received in after:
        if received < tripped_after + POLICY.open_seconds:
            assert _stages(answer)["history"]["status"] == "breaker_open", _why(answer)
    assert all(_ask(client, u)[1]["rung"] == "full" for u in users[1:4])
    assert _metrics(client)[("eightbox_breaker_redis", ())] == 0
    _no_5xx(client)


@pytest.mark.parametrize("missing, two_tower, rank", [
    ("index", ("skipped", "no ANN index in the bundle"), ("ok", "")),  # the ranker ranks the other sources
    ("ranker", ("ok", ""), ("skipped", "no ranker in the bundle")),  # items in source order, unscored
])
def test_a_champion_missing_a_component_is_served_as_fallback_and_its_stages_say_why(server, tmp_path, missing,
                                                                                      two_tower, rank):
    settings, client, bundle_dir, users = server
    _serve(settings, _without(bundle_dir, tmp_path, missing))
    for i in range(N):
        answer = _ask(client, users[i % len(users)])[1]
        stages = _stages(answer)
        assert answer["rung"] == "fallback" and len(answer["items"]) == 10, _why(answer)
        assert (stages["source:two_tower"]["status"], stages["source:two_tower"]["detail"]) == two_tower, _why(answer)
        assert (stages["rank"]["status"], stages["rank"]["detail"]) == rank, _why(answer)
        scored = [item["p_click"] is not None and 0 < item["p_click"] < 1 for item in answer["items"]]
        assert scored == [rank[0] == "ok"] * 10, answer["items"]
    _no_5xx(client)
