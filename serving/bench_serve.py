"""Open-loop load on the serving API, beside a floor server, at fixed request rates.

Self-contained by default: a stack of its own under ``<home>/bench/serve`` (Kafka, Redis, MLflow,
then the real serving process, deploy/serving_service.py; ports +500, clear of the demo's and the
tests'), with a 100k-item world that `bench_world` builds (or loads from its cache), registers as
champion and writes online through Feast; everything it started is stopped at the end. With
``url`` it measures an API that is already running instead (the demo's, say), on whatever catalog
that API serves.

For each rate (25/50/100/200 RPS; 15 s each, quick: 5 s) the API's
``POST /recommend`` gets ``rate × seconds`` requests, then the floor server (`floor_server`: same
framework, a precomputed list) gets the same schedule. Users are ``u00000``.. over the simulator's
user count, drawn with a fixed seed; ``k`` = 10.

Open loop: request i is *scheduled* at ``t0 + i / rate`` and sent then whatever earlier requests are
doing (each is its own task on one ``httpx.AsyncClient`` with a connection pool). Its latency runs
from the scheduled time, not the actual send, to the end of the response: when the server (or the
load generator) falls behind, the waiting shows up in the latency instead of silently lowering the
offered rate: no coordinated omission. The generator shares the machine's cores with the servers,
so its own lag is in the numbers too (``max_send_lag_ms`` per rate says how much).

Errors: non-200 answers (429 shed, 5xx), transport errors and timeouts (2 s). A rate meets the
budget when p99 ≤ 100 ms, no request failed and at least 99 % of the answers came from the full
rung (`full_share`: a fast fallback answer skipped ranking); the JSON reports the highest such rate (else the
lowest rate tried, with ``met_budget`` false), whether that p99 is within the 50 ms aim, per-stage
p99 from the responses' ``explanation.stages[].latency_ms``, the rungs that answered and the stages
that did not end "ok" (timeouts explain a "fallback" rung), and every rate's summary.

A rate far past saturation (`overloaded`: p99 over 10× the budget, or most requests failed) ends
the climb; the rates above it are not run.

The machine is shared and noisy: the 1-minute load average is printed and recorded before each rate.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter, defaultdict

import numpy as np

from eightbox.settings import Settings

PORT_SHIFT = 500
SERVICES = ("kafka", "redis", "mlflow", "serving")  # no Flink, no pusher: features come from the world
BUDGET_MS = 100.0
AIM_MS = 50.0
MIN_FULL_SHARE = 0.99  # of the answers on the full rung, for a rate to meet the budget
TIMEOUT_S = 2.0
K = 10


def bench_settings(settings: Settings, world_key: str) -> Settings:
    """The bench's own stack: home ``<home>/bench/serve``, every port of it shifted by PORT_SHIFT, and
    a registered model per world (``eightbox-bench-<key>``), so that switching worlds never leaves
    one world's champion as the other's holdback."""
    return settings.model_copy(update={
        "home": settings.home / "bench" / "serve", "kafka_bootstrap": None, "redis_url": None,
        "mlflow_tracking_uri": None, "serving_model_name": f"eightbox-bench-{world_key}",
        **{k: getattr(settings, k) + PORT_SHIFT for k in
           ("kafka_port", "kafka_controller_port", "redis_port", "mlflow_port", "serving_port")}})


def plan(quick: bool) -> tuple[list[int], float]:
    """(rates in RPS, seconds per rate): quick shortens each rate, never the climb."""
    return [25, 50, 100, 200], 5.0 if quick else 15.0


def overloaded(r: dict) -> bool:
    """Far past saturation (p99 over 10× the budget, or over half the requests failed): a higher
    rate can only be worse, and would load a shared machine for minutes to show it."""
    return r["errors"] > r["requests"] / 2 or r["p99_ms"] is None or r["p99_ms"] > 10 * BUDGET_MS


def full_share(r: dict) -> float:
    """Share of the answers served on the full rung (the rest degraded: fallback, popularity, static)."""
    answered = sum((r.get("rungs") or {}).values())
    return round((r.get("rungs") or {}).get("full", 0) / answered, 3) if answered else 0.0


def met_budget(r: dict) -> bool:
    """p99 within the budget, no failed request, and the whole funnel ran: a fast answer from a
    lower rung (ranking skipped because Redis timed out) is degradation, not speed."""
    return (r["errors"] == 0 and r["p99_ms"] is not None and r["p99_ms"] <= BUDGET_MS
            and full_share(r) >= MIN_FULL_SHARE)


def best_rate(results: list[dict]) -> dict:
    """The highest rate that met the budget, else the lowest rate tried."""
    passing = [r for r in results if met_budget(r)]
    return max(passing, key=lambda r: r["rps"]) if passing else min(results, key=lambda r: r["rps"])


def summarize(results: list[dict], **extra) -> dict:
    """The bench's JSON: the best rate's figures (`best_rate`), whether it met the budget and the
    aim, the floor ratio, its per-stage p99, every rate's summary, then `extra`."""
    best = best_rate(results)
    ratio = round(best["p99_ms"] / best["floor_p99_ms"], 2) if best["p99_ms"] and best["floor_p99_ms"] else None
    return {"rps": best["rps"], "p50_ms": best["p50_ms"], "p95_ms": best["p95_ms"], "p99_ms": best["p99_ms"],
            "errors": best["errors"], "floor_p99_ms": best["floor_p99_ms"], "ratio": ratio,
            "stages": best["stages"], "rungs": best.get("rungs"), "full_share": full_share(best),
            "stages_not_ok": best.get("not_ok"),
            "met_budget": met_budget(best), "budget_ms": BUDGET_MS,
            "met_aim": met_budget(best) and best["p99_ms"] <= AIM_MS, "aim_ms": AIM_MS, **extra,
            "rates": [{k: r.get(k) for k in ("rps", "p50_ms", "p99_ms", "errors", "floor_p99_ms",
                                            "max_send_lag_ms", "load_1m", "cpu_ms_per_request",
                                            "floor_cpu_ms_per_request", "rungs")} for r in results]}


def _check_ready(url: str) -> None:
    import httpx

    from eightbox.deploy.services import StackError

    try:
        r = httpx.get(f"{url}/readyz", timeout=3)
    except httpx.HTTPError as e:
        raise StackError(f"serving API at {url} is not answering ({type(e).__name__}); "
                         "start it (or leave out --url: the bench then runs its own)") from None
    if r.status_code != 200:
        checks = "; ".join(f"{k}: {v}" for k, v in (r.json().get("checks") or {}).items()) \
            if r.headers.get("content-type", "").startswith("application/json") else r.text[:200]
        raise StackError(f"serving API at {url} is not ready ({checks})")


async def _load(url: str, rate: int, seconds: float, users: list[str]) -> dict:
    """One open-loop run: ``rate × seconds`` requests scheduled at fixed intervals."""
    import httpx

    n = int(rate * seconds)
    latencies = np.full(n, np.nan)  # ms from scheduled time to response end; nan = failed
    stages: dict[str, list[float]] = defaultdict(list)
    not_ok: dict[str, Counter] = defaultdict(Counter)  # stage → its non-ok statuses (timeout, error, ...)
    rungs: Counter = Counter()
    failures: Counter = Counter()
    lag = 0.0
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=TIMEOUT_S) as client:
        loop = asyncio.get_running_loop()

        async def one(i: int, scheduled: float) -> None:
            try:
                r = await client.post("/recommend", json={"user_id": users[i % len(users)], "k": K})
                done = loop.time()
                if r.status_code != 200:
                    failures[str(r.status_code)] += 1
                    return
                body = r.json()
            except httpx.HTTPError as e:
                failures[type(e).__name__] += 1
                return
            latencies[i] = (done - scheduled) * 1e3
            rungs[body.get("rung", "?")] += 1
            for st in (body.get("explanation") or {}).get("stages") or []:
                stages[st["name"]].append(float(st["latency_ms"]))
                if st.get("status", "ok") != "ok":
                    not_ok[st["name"]][st["status"]] += 1

        tasks = []
        t0 = loop.time() + 0.05
        for i in range(n):
            scheduled = t0 + i / rate
            delay = scheduled - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            lag = max(lag, loop.time() - scheduled)
            tasks.append(asyncio.create_task(one(i, scheduled)))
        await asyncio.gather(*tasks)
    ok = latencies[~np.isnan(latencies)]
    pct = (lambda q: round(float(np.percentile(ok, q)), 2)) if len(ok) else (lambda q: None)
    return {"rps": rate, "requests": n, "errors": int(n - len(ok)), "failures": dict(failures),
            "p50_ms": pct(50), "p95_ms": pct(95), "p99_ms": pct(99), "max_send_lag_ms": round(lag * 1e3, 2),
            "rungs": dict(rungs), "not_ok": {k: dict(v) for k, v in not_ok.items()},
            "stages": {k: round(float(np.percentile(v, 99)), 2) for k, v in stages.items()}}


def _warm(url: str, users: list[str]) -> None:
    asyncio.run(_load(url, 20, 1.0, users))


def _wait_ready(url: str, timeout_s: float) -> None:
    """Until /readyz answers 200 (the champion loaded, Redis and Kafka reachable), else StackError."""
    from eightbox.deploy.services import StackError, http_ok

    deadline = time.monotonic() + timeout_s
    while not http_ok(f"{url}/readyz", timeout=2.0):
        if time.monotonic() > deadline:
            _check_ready(url)  # raises with the failing checks
            raise StackError(f"serving API at {url} did not become ready within {timeout_s:.0f} s")
        time.sleep(1.0)


def _cpu_s(pid: int | None) -> float | None:
    """CPU seconds (user + system, all threads) the process has used so far; None without a pid."""
    import psutil

    if pid is None:
        return None
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def _cpu_ms_per_request(pid: int | None, before: float | None, requests: int) -> float | None:
    after = _cpu_s(pid)
    return round((after - before) * 1e3 / requests, 2) if after is not None and before is not None else None


def _measure(url: str, users: list[str], quick: bool, server_pid: int | None = None) -> list[dict]:
    """Each rate against the API, then the same schedule against a fresh floor server. With the
    server's pid, also its CPU milliseconds per request (the floor's beside it): a figure the
    machine's other load inflates far less than latency."""
    from . import floor_server

    rates, seconds = plan(quick)
    proc, floor_url = floor_server.start()
    try:
        _warm(url, users)
        _warm(floor_url, users)
        results = []
        for rate in rates:
            load = round(os.getloadavg()[0], 2)
            print(f"  {rate:>4} RPS × {seconds:.0f} s (load average {load}) ...", flush=True)
            cpu = _cpu_s(server_pid)
            api = asyncio.run(_load(url, rate, seconds, users))
            api["cpu_ms_per_request"] = _cpu_ms_per_request(server_pid, cpu, api["requests"])
            cpu = _cpu_s(proc.pid)
            floor = asyncio.run(_load(floor_url, rate, seconds, users))
            api |= {"floor_p99_ms": floor["p99_ms"], "load_1m": load,
                    "floor_cpu_ms_per_request": _cpu_ms_per_request(proc.pid, cpu, floor["requests"])}
            results.append(api)
            print(f"       api p50 {api['p50_ms']} / p99 {api['p99_ms']} ms, {api['errors']} errors "
                  f"{api['failures'] or ''}, rungs {api['rungs']}; floor p99 {floor['p99_ms']} ms "
                  f"(send lag ≤ {api['max_send_lag_ms']} ms)\n"
                  f"       server CPU {api['cpu_ms_per_request']} ms per request, floor's "
                  f"{api['floor_cpu_ms_per_request']} ms\n       stage p99 {api['stages']}\n"
                  f"       stages not ok {api['not_ok']}", flush=True)
            if overloaded(api) and rate != rates[-1]:
                print(f"  overloaded at {rate} RPS: higher rates skipped", flush=True)
                break
    finally:
        floor_server.stop(proc)
    return results


def run(settings: Settings, quick: bool, url: str | None = None, catalog: int = 100_000) -> dict:
    """Benchmark the API at `url`, else on a stack and a `catalog`-item world of the bench's own."""
    from eightbox.ingest.simulator import user_id

    started = time.monotonic()
    _, seconds = plan(quick)
    extra = {"quick": quick, "seconds_per_rate": seconds}
    if url is not None:
        from eightbox.ingest.simulator.config import SimConfig

        _check_ready(url)
        n_users = SimConfig().n_users
        users = [user_id(u) for u in random.Random(0).choices(range(n_users), k=4096)]
        results = _measure(url, users, quick)
        return summarize(results, catalog=f"the running API's at {url}", **extra,
                         seconds=round(time.monotonic() - started, 1))

    from eightbox.deploy.pusher_service import stack_services
    from eightbox.deploy.serving_service import base_url
    from eightbox.deploy.supervisor import Supervisor

    from . import bench_world

    params = bench_world.WorldParams.for_catalog(catalog)
    bench = bench_settings(settings, params.key())
    supervisor = Supervisor(bench, stack_services(bench, with_pusher=False, only=SERVICES))
    supervisor.down(progress=lambda *_: None)  # whatever an interrupted earlier run left
    print(f"bench serve: a stack of its own under {bench.home} ...", flush=True)
    try:
        supervisor.up([s for s in SERVICES if s != "serving"], progress=lambda m: print(f"  {m}", flush=True))
        bench_world.ensure(bench, params, progress=lambda m: print(m, flush=True))
        supervisor.start("serving", progress=lambda m: print(f"  {m}", flush=True))
        url = base_url(bench)
        _wait_ready(url, timeout_s=180.0)
        users = [user_id(u) for u in random.Random(0).choices(range(params.n_users), k=4096)]
        pid = next(r.pid for r in supervisor.status() if r.name == "serving")
        results = _measure(url, users, quick, server_pid=pid)
    finally:
        supervisor.down(progress=lambda m: print(f"  {m}", flush=True))
    return summarize(results, catalog=params.n_items, world=params.key(), **extra,
                     seconds=round(time.monotonic() - started, 1))


def profile(settings: Settings, catalog: int = 100_000, requests: int = 300) -> dict:
    """Where a request's CPU goes: the funnel in this process on the bench world (Redis of the
    bench's stack), `requests` users in sequence under cProfile, with every ``asyncio.to_thread``
    run inline so the profiler sees the work, stage timeouts lifted so every stage runs to its end,
    and one timed popularity-board refresh. The CPU and stage figures come from a pass without the
    profiler; a second pass, profiled, prints the top functions. Last, `_board_ab`: the tail at
    25 requests per second with the board's refresh idle, then running."""
    import cProfile
    import io
    import pstats
    from dataclasses import replace

    from eightbox.deploy.pusher_service import stack_services
    from eightbox.deploy.supervisor import Supervisor
    from eightbox.ingest.simulator import user_id

    from . import bench_world
    from .funnel import build_funnel
    from .stages import StageBudget
    from .models import ModelSet

    params = bench_world.WorldParams.for_catalog(catalog)
    bench = bench_settings(settings, params.key())
    supervisor = Supervisor(bench, stack_services(bench, with_pusher=False, only=("redis", "mlflow")))
    supervisor.down(progress=lambda *_: None)
    try:
        supervisor.up(progress=lambda m: print(f"  {m}", flush=True))
        root = bench_world.ensure(bench, params, progress=lambda m: print(m, flush=True))
        models = ModelSet.from_dir(root / "bundle")
        funnel = build_funnel(bench, models, redis_timeout_s=5.0)
        funnel.config = replace(funnel.config, total_timeout_ms=60_000.0,
                                stages={k: StageBudget(b.budget_ms, 60_000.0) for k, b in funnel.config.stages.items()})
        cpu = time.process_time()
        funnel.board.refresh()
        board_cpu_ms = (time.process_time() - cpu) * 1e3
        users = [user_id(u) for u in random.Random(0).choices(range(params.n_users), k=requests)]
        threaded = asyncio.to_thread

        async def inline(fn, /, *args, **kwargs):
            return fn(*args, **kwargs)

        async def serve(batch: list[str]) -> list[tuple]:
            out = []
            for u in batch:
                cpu = time.process_time()
                rec = await funnel.recommend(u, K)
                out.append((rec, (time.process_time() - cpu) * 1e3))
            return out

        asyncio.to_thread = inline
        try:
            asyncio.run(serve(users[:20]))  # warm: readers, caches
            done = asyncio.run(serve(users))  # measured without the profiler's overhead
            prof = cProfile.Profile()
            prof.enable()
            asyncio.run(serve(users))
            prof.disable()
        finally:
            asyncio.to_thread = threaded
        board = {state: asyncio.run(_board_ab(bench, models, users[:250], refreshing=state == "refreshing"))
                 for state in ("idle", "refreshing")}
    finally:
        supervisor.down(progress=lambda m: print(f"  {m}", flush=True))
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("cumulative").print_stats(40)
    print(text.getvalue(), flush=True)
    stages: dict[str, list[float]] = defaultdict(list)
    for rec, _ in done:
        for st in rec.stages:
            stages[st.name].append(st.latency_ms)
    cpu_ms = [c for _, c in done]
    return {"catalog": params.n_items, "requests": requests, "load_1m": round(os.getloadavg()[0], 2),
            "rungs": dict(Counter(rec.rung for rec, _ in done)),
            "cpu_ms_p50": round(float(np.percentile(cpu_ms, 50)), 2),
            "cpu_ms_p99": round(float(np.percentile(cpu_ms, 99)), 2),
            "stage_ms_p50": {k: round(float(np.percentile(v, 50)), 2) for k, v in stages.items()},
            "board_refresh_cpu_ms": round(board_cpu_ms, 1), "board_ab": board}


async def _board_ab(settings: Settings, models, users: list[str], refreshing: bool, rate: float = 25.0) -> dict:
    """The funnel as served (production timeouts, worker threads) at `rate` requests per second,
    open loop, with the popularity board's 5-second refresh running or not: what the refresh
    costs the other requests."""
    from .funnel import build_funnel

    funnel = build_funnel(settings, models)
    funnel.board.refresh()
    if refreshing:
        funnel.board.start()
    latencies: list[float] = []
    rungs: Counter = Counter()

    async def one(u: str) -> None:
        started = time.perf_counter()
        rec = await funnel.recommend(u, K)
        latencies.append((time.perf_counter() - started) * 1e3)
        rungs[rec.rung] += 1

    t0, tasks = time.perf_counter(), []
    for i, u in enumerate(users):
        await asyncio.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
        tasks.append(asyncio.create_task(one(u)))
    await asyncio.gather(*tasks)
    if refreshing:
        await funnel.board.stop()
    p50, p95, p99 = (round(float(v), 1) for v in np.percentile(latencies, [50, 95, 99]))
    return {"p50_ms": p50, "p95_ms": p95, "p99_ms": p99, "rungs": dict(rungs)}
