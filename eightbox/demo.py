"""`make demo`: the closed loop on the embedded stack, box by box, each under its own header.

Day 0 (boxes 1-6) is built here; the served days, the drift, monitoring, retraining and the
promotion ladder are `eightbox.loop`.
"""

from __future__ import annotations

import time
from datetime import date, datetime, timedelta, timezone

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

    t = time.monotonic()
    print("flink feature job: ensuring it runs ...", flush=True)
    job_id, how = control.ensure(settings, opts=demo_job_options(settings))
    print(f"flink feature job: {how} ({job_id}, {time.monotonic() - t:.1f} s)")
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
    from eightbox.features.backfill import backfill_days
    from eightbox.features.nightly import DAILY_VIEWS, materialize_daily

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
    print("  Feast: applying the registry, materializing the daily views into Redis ...", flush=True)
    end = materialize_daily(settings, last_day)
    print(f"  Feast: materialized {', '.join(DAILY_VIEWS)} up to {end:%Y-%m-%d %H:%M}Z ({time.monotonic() - t:.0f} s)")


def _train(settings: Settings, tower_epochs: int):
    """The training pipeline on everything the lake holds (see `training.pipeline`)."""
    from eightbox.training.pipeline import TrainConfig, train

    t = time.monotonic()
    result = train(settings, TrainConfig(tower_epochs=tower_epochs, model_name=settings.serving_model_name),
                   progress=lambda m: print(m, flush=True))
    print(f"  trained in {time.monotonic() - t:.0f} s ({', '.join(f'{k} {v:g} s' for k, v in result.seconds.items())})")
    return result


def _show_registry(settings: Settings, result) -> None:
    print(f"  MLflow run {result.run_id} → registered model {settings.serving_model_name} version {result.version}")
    print(f"  dataset: {result.dataset}")
    if result.gate_passed:
        print(f"  offline gate passed; aliases now on this version: {', '.join(result.aliases) or 'none'}")
    else:
        print("  offline gate refused it:")
        for reason in result.gate_reasons:
            print(f"    - {reason}")
    print(f"  browse: {settings.mlflow_uri}/#/models/{settings.serving_model_name}")


def _read_online(settings: Settings, events: list) -> None:
    """A user's and a few items' ranking features, read online (OnlineReader = Feast's keys, one round trip)."""
    from eightbox.features.online import OnlineReader
    from eightbox.training.pipeline import TrainConfig

    catalog = _items_catalog(settings)
    user = _popular(events, "item_clicked", lambda e: e.user_id, 1)[0]
    items = [i for i in _popular(events, "item_clicked", lambda e: e.item_id, 10) if i in catalog][:3]
    service = TrainConfig().feature_service  # the service the demo's models train and serve with
    reader = OnlineReader(settings, service)
    t = time.perf_counter()
    row = reader.read(user, items, categories=[catalog[i][0] for i in items],
                      creators=[catalog[i][1] for i in items])
    took = (time.perf_counter() - t) * 1000
    history = OnlineReader(settings, "user_history_v1").read(user, items[:1])["last_engaged_items"][0]
    print(f"  feature service {service} for user {user} × {len(items)} items "
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


def _fresh_home(settings: Settings) -> None:
    """The loop replays one simulated world from its first day: a home holding an earlier run's
    stack state (broker log, lake, registry) is stopped and cleared first, as `make clean` would."""
    import shutil

    from eightbox.deploy.pusher_service import stack_services
    from eightbox.deploy.supervisor import Supervisor

    stale = [d for d in (settings.home / "data", settings.home / "run", settings.lake_dir) if d.exists()]
    if not stale:
        return
    print(f"clearing the previous run's stack state under {settings.home} (the loop starts from day 0)")
    Supervisor(settings, stack_services(settings)).down()
    for d in stale:
        shutil.rmtree(d, ignore_errors=True)


def run_demo(settings: Settings, quick: bool = False, seed: int | None = None) -> dict:
    """The closed loop (`eightbox.loop`) on a fresh embedded stack; returns its summary. `seed`: another
    simulated world than the profile's."""
    from dataclasses import replace

    from eightbox.deploy.pusher_service import stack_services
    from eightbox.deploy.supervisor import Supervisor
    from eightbox.ingest.topics import ensure_topics
    from eightbox.loop import FULL, QUICK, print_summary, run_loop

    profile = QUICK if quick else FULL
    profile = profile if seed is None else replace(profile, seed=seed)
    # Serving stamps impressions with the simulated time each request carries (see `loop`).
    settings = settings.model_copy(update={"serving_trust_request_time": True})
    started = time.monotonic()
    _fresh_home(settings)
    print("━━ embedded stack " + "━" * 60)
    supervisor = Supervisor(settings, stack_services(settings))
    supervisor.up()
    ensure_topics(settings)
    job_id = _ensure_stream_job(settings)

    def bootstrap():
        return _day_zero(settings, profile, job_id)

    summary = run_loop(settings, profile, bootstrap=bootstrap, header=header)
    print("\n━━ summary " + "━" * 67)
    print_summary(summary)
    print("\n━━ stack " + "━" * 69)
    for row in supervisor.status():
        print(f"  {row.name:<17} {row.state:<10} pid {row.pid}  port {row.port or '-'}  {row.rss_mb:,.0f} MiB")
    print(f"\ndemo finished in {time.monotonic() - started:.0f} s; the stack is still up "
          f"(`make down` stops it, `.venv/bin/eightbox status` reports on it)")
    return summary


def _day_zero(settings: Settings, profile, job_id: str):
    """Boxes 1-6 on the world before Eightbox: a popularity policy's traffic up to the end of day 0
    (`profile.history_days` of it), published, archived, featurised, trained on; the first model
    becomes champion. Returns (market, the day's actions still in its future: they go through
    /events when their time comes)."""
    from eightbox.ingest import lake
    from eightbox.ingest.archiver import LakeArchiver
    from eightbox.ingest.publish import publish_events
    from eightbox.ingest.schema import EVENT_TYPES
    from eightbox.ingest.simulator import Marketplace, SimConfig

    header(*BOXES[0])
    history = timedelta(days=profile.history_days)
    config = SimConfig(seed=profile.seed, sessions_per_hour=profile.sessions_per_hour,
                       start=SIM_START + timedelta(days=1) - history,
                       drift_at=SIM_START + timedelta(days=profile.drift_day),
                       drift_strength=profile.drift_strength, **profile.world)
    market = Marketplace(config)
    events = [*market.bootstrap_events(), *market.simulate(hours=history / timedelta(hours=1))]
    print(f"  simulated marketplace: {config.n_users} users, {config.n_items} items; {profile.history_days} "
          f"day(s) up to day 0 under a popularity policy → {len(events)} events (drift of strength "
          f"{profile.drift_strength:g} on day {profile.drift_day})")
    publish_events(settings, events, label="day 0 traffic")
    print("  lake archiver (consumer group) → Parquet, exactly once")
    n = LakeArchiver(settings).run(idle_exit_s=3.0)
    print(f"  archived {n} events")
    _trace_one_click(settings, events)

    header(*BOXES[1])
    day_end = SIM_START + timedelta(days=1)
    _watch_streaming_features(settings, job_id, events, day_end, timeout_s=60.0)

    header(*BOXES[2])
    files = list(settings.lake_dir.glob("raw/*/dt=*/hr=*/*.parquet"))
    print(f"  raw lake: {settings.lake_dir / 'raw'} ({len(files)} Parquet files)")
    for event_type in EVENT_TYPES:
        table = lake.read_events(settings.lake_dir, event_type)
        print(f"  {event_type:<18} {table.num_rows:>8} rows")
    # Day 0 always: the first training joins these daily tables point in time (no logged features yet).
    _backfill_and_materialize(settings, config.start.date(), SIM_START.date())

    header(*BOXES[3])
    result = _train(settings, profile.tower_epochs)
    header(*BOXES[4])
    _show_registry(settings, result)

    header(*BOXES[5])
    _read_online(settings, events)
    return market, market.flush_pending()
