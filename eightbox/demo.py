"""`make demo`: the loop on the embedded stack, box by box, each under its own header.

Boxes that later issues build say so; the demo grows as they land.
"""

from __future__ import annotations

import time
from datetime import date, datetime, timedelta, timezone

import pyarrow.compute as pc

from eightbox.settings import Settings

BOXES = [
    ("1", "raw data", "Kafka"),
    ("2", "feature pipeline", "Flink streaming, Spark batch"),
    ("3", "offline store", "Parquet lake, Feast"),
    ("4", "training", "two-tower + multi-task ranker"),
    ("5", "model registry", "MLflow"),
    ("6", "online store", "Feast on Redis"),
    ("7", "serving", "FAISS retrieval → ranking → re-rank"),
    ("8", "monitoring", "drift → retrain"),
]


def header(number: str, title: str, engine: str) -> None:
    print(f"\n━━ box {number} · {title} ({engine}) " + "━" * max(0, 60 - len(title) - len(engine)))


def _trace_one_click(settings: Settings, events: list) -> None:
    from eightbox.ingest.trace import locate

    click = next(e for e in events if e.event_type == "item_clicked" and e.request_id)
    where = locate(settings, "item_clicked", click.event_id)
    if where is None:
        print(f"  trace: click {click.event_id} is not in the lake yet")
        return
    row = where["row"]
    print(f"  trace one click: {row['user_id']} clicked {row['item_id']} at position {row['position']} "
          f"({row['event_time']:%Y-%m-%d %H:%M:%S}Z, request {row['request_id']})")
    print(f"    gateway  validated, ip → {row['client']['ip'] if row['client'] else '-'}")
    print(f"    kafka    {where['topic']} partition {where['partition']} offset {where['offset']} "
          f"(key {row['user_id']})")
    print(f"    lake     {where['file'].relative_to(settings.lake_dir)}")

SIM_START = datetime(2024, 1, 1, tzinfo=timezone.utc)  # the simulator's clock starts here (SimConfig)


def demo_job_options(settings: Settings):
    """The demo publishes hours of simulated traffic in seconds and then stops, so each partition's
    last event of the stretch comes early in wall time: a 10 s idle timeout (the production default
    waits 5 minutes, see `features.stream.sql`) lets the last windows close before the demo moves on."""
    from eightbox.features.stream.sql import JobOptions

    return JobOptions(kafka_servers=settings.kafka_servers, idle_timeout_s=10.0)


def _ensure_stream_job(settings: Settings) -> str:
    """The Flink feature job: the running one, else resumed from its newest retained checkpoint or
    savepoint (nothing recounted), else started from the earliest offsets."""
    from eightbox.features.stream import control

    job_id = control.find_job(settings)
    if job_id:
        print(f"flink feature job: already running ({job_id})")
        return job_id
    restore = control.latest_checkpoint(settings)
    t = time.monotonic()
    print(f"flink feature job: submitting{' from ' + restore if restore else ''} ...", flush=True)
    job_id = control.start(settings, restore=restore, opts=demo_job_options(settings))
    control.wait_state(settings, job_id, {"RUNNING"}, timeout=90)
    print(f"flink feature job: running ({job_id}, {time.monotonic() - t:.1f} s)")
    return job_id


def _popular(events: list, event_type: str, key, n: int) -> list:
    from collections import Counter

    return [k for k, _ in Counter(key(e) for e in events if e.event_type == event_type).most_common(n)]


def _items_catalog(settings: Settings) -> dict[str, tuple[str, str]]:
    """item_id → (category, creator_id), from the lake's ItemPublished events."""
    from eightbox.ingest import lake

    table = lake.read_events(settings.lake_dir, "item_published").select(["item_id", "category", "creator_id"])
    return {i: (c, cr) for i, c, cr in zip(*(table[col].to_pylist() for col in table.column_names))}


def _watch_streaming_features(settings: Settings, job_id: str, events: list, day_end: datetime,
                              timeout_s: float) -> None:
    """Show the Flink job's windowed counts arriving in Redis (through the pusher) while it works
    through the day just published."""
    from eightbox.deploy.pusher_service import heartbeat
    from eightbox.features.online import OnlineReader

    opts = demo_job_options(settings)
    print(f"  Flink SQL job {job_id}: HOP windows (15 min items, 30 min user×category, 1 min slide), "
          f"watermark = event time − {opts.out_of_orderness_s:g} s, exactly-once → eightbox.feature-updates")
    beat = heartbeat(settings) or {}
    print(f"  pusher (pid {beat.get('pid', '?')}): feature-updates (read_committed) → Feast push → Redis; "
          f"history → {settings.features_dir}/<table>/dt=*/push+*.parquet")
    items = _popular(events, "item_clicked", lambda e: e.item_id, 3)
    catalog = _items_catalog(settings)
    user = next((u for u, i in ((e.user_id, e.item_id) for e in reversed(events) if e.event_type == "item_clicked")
                 if i in catalog), None)
    category = catalog.get(next(e.item_id for e in reversed(events) if e.event_type == "item_clicked"
                                and e.user_id == user), ("?",))[0] if user else None
    reader = OnlineReader(settings, ["item_session:item_clicks_15m", "item_session:item_impressions_15m",
                                     "user_category_session:uc_clicks_30m"])
    # The last windows of the day close only when the watermark passes their end, i.e. when later
    # traffic arrives (the next run's day): wait for the stream to reach the day's last minutes.
    target = day_end - timedelta(minutes=5)
    print(f"  waiting for stream time to reach {target:%Y-%m-%d %H:%M}Z (windows close when the watermark passes "
          f"their end) — values read back from Redis through OnlineReader:")
    started = time.monotonic()
    first_pushed = (heartbeat(settings) or {}).get("pushed", 0)
    last_print = -10.0
    while True:
        elapsed = time.monotonic() - started
        beat = heartbeat(settings) or {}
        latest = beat.get("latest")
        reached = latest is not None and datetime.fromisoformat(latest.replace("Z", "+00:00")) >= target
        if elapsed - last_print >= 5.0 or reached or elapsed > timeout_s:
            last_print = elapsed
            values = reader.read(user or "-", items, categories=[category or "-"] * len(items))
            shown = "  ".join(f"{i}: {c}/{m}" for i, c, m in zip(items, values["item_clicks_15m"],
                                                                 values["item_impressions_15m"]))
            print(f"  +{elapsed:4.0f}s  stream time {(latest or '-')[:16].replace('T', ' ')}  "
                  f"rows pushed {beat.get('pushed', 0) - first_pushed:>8,}  clicks/impressions 15m  {shown}  "
                  f"uc_clicks_30m[{user}×{category}] = {values['uc_clicks_30m'][0]}", flush=True)
        if reached:
            break
        if elapsed > timeout_s:
            print(f"  (stopped watching after {timeout_s:.0f} s; the job and the pusher keep going)")
            break
        time.sleep(0.5)


def _backfill_and_materialize(settings: Settings, first_day: date, last_day: date) -> None:
    """Spark recomputes the daily tables of the simulated day(s) from the lake; Feast loads them online."""
    from eightbox.features import store as feature_store
    from eightbox.features.backfill import backfill_days
    from eightbox.features.backfill import midnight

    t = time.monotonic()
    print(f"  Spark backfill ({settings.spark_master}) of {first_day}"
          f"{'' if last_day == first_day else ' … ' + str(last_day)}: starting Spark, computing daily windows ...",
          flush=True)
    counts = backfill_days(settings, first_day, last_day)
    print(f"  backfill done in {time.monotonic() - t:.0f} s; rows written (event_timestamp = end of day):")
    for table, rows in counts.items():
        print(f"    {table:<22} {rows:>8} rows")
    print(f"  offline history: {settings.features_dir}")
    for table in ("item_session", "user_category_session", "user_recent"):
        files = list((settings.features_dir / table).glob("dt=*/push+*.parquet"))
        print(f"    {table:<22} {len(files):>8} files from the streaming pusher")
    t = time.monotonic()
    feature_store.apply(settings)
    end = midnight(last_day + timedelta(days=1))
    print("  Feast: registry applied; materializing the daily views into Redis ...", flush=True)
    daily = ["user_daily", "user_category_daily", "item_daily", "creator_daily"]
    feature_store.materialize(settings, end - timedelta(days=31), end, views=daily)
    print(f"  Feast: materialized {', '.join(daily)} up to {end:%Y-%m-%d %H:%M}Z ({time.monotonic() - t:.0f} s)")


def _train(settings: Settings, quick: bool):
    """The training pipeline on everything the lake holds (see `training.pipeline`)."""
    from eightbox.training.pipeline import TrainConfig, train

    t = time.monotonic()
    result = train(settings, TrainConfig(tower_epochs=4 if quick else 8), progress=lambda m: print(m, flush=True))
    print(f"  trained in {time.monotonic() - t:.0f} s ({', '.join(f'{k} {v:g} s' for k, v in result.seconds.items())})")
    return result


def _show_registry(settings: Settings, result) -> None:
    print(f"  MLflow run {result.run_id} → registered model eightbox-recommender version {result.version}")
    print(f"  dataset: {result.dataset}")
    if result.gate_passed:
        print(f"  offline gate passed; aliases now on this version: {', '.join(result.aliases) or 'none'}")
    else:
        print("  offline gate refused it:")
        for reason in result.gate_reasons:
            print(f"    - {reason}")
    print(f"  browse: {settings.mlflow_uri}/#/models/eightbox-recommender")


def _serve_simulated_users(settings: Settings, market, visits: int) -> None:
    """Simulated users ask the running API for a slate (`/recommend`), see it, and their clicks and
    engagements go back through `/events`; the server logs each impression with its features."""
    import httpx
    import numpy as np

    from eightbox.deploy.serving_service import base_url
    from eightbox.ingest.simulator import Visit

    base, token = base_url(settings), sorted(settings.admin_tokens)[0]
    with httpx.Client(base_url=base, timeout=10.0) as http:
        reload = http.post("/admin/reload", headers={"Authorization": f"Bearer {token}"})
        deadline = time.monotonic() + 60
        while http.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(1.0)
        ready = http.get("/readyz").json()
        print(f"  API {base}: reload → {reload.status_code}; ready: {ready.get('ready', ready)}")
        latencies, rungs, clicks, shown, sent = [], {}, 0, 0, 0
        stream = (v for v in market.visits(hours=24.0) if isinstance(v, Visit))
        for visit in (next(stream) for _ in range(visits)):
            t = time.perf_counter()
            r = http.post("/recommend", json={"user_id": visit.user_id, "k": market.config.slate_size})
            latencies.append((time.perf_counter() - t) * 1000)
            body = r.json()
            rungs[body.get("rung", r.status_code)] = rungs.get(body.get("rung", r.status_code), 0) + 1
            slate = [i["item_id"] for i in body.get("items", [])]
            if not slate:
                continue
            # the client reports what the user did, quoting the server's request id (labels join on it)
            outcome = [e.model_copy(update={"request_id": body["request_id"]})
                       for e in market.respond(visit, slate) if e.event_type != "impression_served"]
            shown, clicks = shown + len(slate), clicks + sum(e.event_type == "item_clicked" for e in outcome)
            if outcome:
                sent += http.post("/events", content="[" + ",".join(e.model_dump_json() for e in outcome) + "]",
                                  headers={"content-type": "application/json"}).status_code == 202
    p50, p99 = np.percentile(latencies, [50, 99])
    print(f"  {visits} simulated visits → /recommend: p50 {p50:.1f} ms, p99 {p99:.1f} ms (HTTP, this process); "
          f"rungs {rungs}")
    print(f"  {shown} items shown, {clicks} clicked (CTR {clicks / max(shown, 1):.3f}); "
          f"{sent} /events batches accepted; impressions logged by the server to eightbox.impressions")


def _read_online(settings: Settings, events: list) -> None:
    """A user's and a few items' ranking features, read online (OnlineReader = Feast's keys, one round trip)."""
    from eightbox.features.online import OnlineReader

    catalog = _items_catalog(settings)
    user = _popular(events, "item_clicked", lambda e: e.user_id, 1)[0]
    items = [i for i in _popular(events, "item_clicked", lambda e: e.item_id, 10) if i in catalog][:3]
    reader = OnlineReader(settings, "ranker_v1")
    t = time.perf_counter()
    row = reader.read(user, items, categories=[catalog[i][0] for i in items],
                      creators=[catalog[i][1] for i in items])
    took = (time.perf_counter() - t) * 1000
    history = OnlineReader(settings, "user_history_v1").read(user, items[:1])["last_engaged_items"][0]
    print(f"  feature service ranker_v1 for user {user} × {len(items)} items "
          f"(OnlineReader, one pipelined Redis round trip, {took:.1f} ms):")
    user_cols = [c for c in reader.feature_names if c.startswith("user_")]
    print("    user  " + "  ".join(f"{c}={row[c][0]}" for c in user_cols))
    print(f"    user_history_v1 last_engaged_items = {history}")
    item_cols = [c for c in reader.feature_names if not c.startswith("user_")]
    for k, item in enumerate(items):
        vals = []
        for c in item_cols:
            v = row[c][k]
            vals.append(f"{c}={v:.3f}" if isinstance(v, float) else f"{c}={v}")
        print(f"    {item} ({catalog[item][0]}, {catalog[item][1]})")
        for chunk in range(0, len(vals), 5):
            print("      " + "  ".join(vals[chunk:chunk + 5]))


def run_demo(settings: Settings, quick: bool = False) -> None:
    from eightbox.deploy.supervisor import Supervisor
    from eightbox.ingest import lake
    from eightbox.ingest.archiver import LakeArchiver
    from eightbox.ingest.publish import publish_events, simulation_events
    from eightbox.ingest.schema import EVENT_TYPES
    from eightbox.ingest.topics import ensure_topics

    from eightbox.deploy.pusher_service import stack_services

    started = time.monotonic()
    print("━━ embedded stack " + "━" * 60)
    supervisor = Supervisor(settings, stack_services(settings))
    supervisor.up()
    ensure_topics(settings)
    job_id = _ensure_stream_job(settings)

    header(*BOXES[0])
    hours = 6.0 if quick else 24.0
    # Each run adds the next stretch of the same simulated world, rather than repeating the first.
    done = len(list((settings.lake_dir / "raw" / "impression_served").glob("dt=*/hr=*")))
    market, events = simulation_events(hours=hours, seed=7, quick=quick, after_hours=float(done))
    print(f"  simulated marketplace: {market.config.n_users} users, {market.config.n_items} items; "
          f"hours {done}–{done + hours:g} of its traffic → {len(events)} events")
    publish_events(settings, events, label="simulated traffic")

    print("  lake archiver (consumer group) → Parquet, exactly once")
    n = LakeArchiver(settings).run(idle_exit_s=3.0)
    print(f"  archived {n} events this run")
    _trace_one_click(settings, events)

    header(*BOXES[1])
    day_start = SIM_START + timedelta(hours=done)
    day_end = day_start + timedelta(hours=hours)
    _watch_streaming_features(settings, job_id, events, day_end, timeout_s=90.0 if quick else 150.0)

    header(*BOXES[2])
    files = list(settings.lake_dir.glob("raw/*/dt=*/hr=*/*.parquet"))
    print(f"  raw lake: {settings.lake_dir / 'raw'} ({len(files)} Parquet files)")
    for event_type in EVENT_TYPES:
        table = lake.read_events(settings.lake_dir, event_type)
        days = sorted(pc.unique(pc.strftime(table["event_time"], "%Y-%m-%d")).to_pylist())
        print(f"  {event_type:<18} {table.num_rows:>8} rows   days: {', '.join(days) or '-'}")
    last_day = (day_end - timedelta(microseconds=1)).date()
    _backfill_and_materialize(settings, day_start.date(), last_day)

    header(*BOXES[3])
    result = _train(settings, quick)
    header(*BOXES[4])
    _show_registry(settings, result)

    header(*BOXES[5])
    _read_online(settings, events)

    header(*BOXES[6])
    _serve_simulated_users(settings, market, visits=60 if quick else 200)

    header(*BOXES[7])
    print("  not built yet — see `issues`")

    print("\n━━ stack " + "━" * 69)
    for row in supervisor.status():
        print(f"  {row.name:<17} {row.state:<10} pid {row.pid}  port {row.port or '-'}  {row.rss_mb:,.0f} MiB")
    print(f"\ndemo finished in {time.monotonic() - started:.0f} s; the stack is still up "
          f"(`make down` stops it, `.venv/bin/eightbox status` reports on it)")
