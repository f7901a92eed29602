"""`eightbox bench freshness`: how long from a click entering the gateway until its count is readable online.

Path measured, per event: `EventProducer.publish` (gateway: validate, pseudonymize, Kafka `acks=all`)
→ Flink SQL job (watermark, dedupe, 15-minute HOP window sliding by 1 minute, exactly-once Kafka
sink: records become visible to read_committed consumers when the checkpoint that covers them
completes) → pusher (`eightbox.cli features push`, read_committed, Feast push) → Redis. The read side
is `OnlineReader` (Feast's own Redis keys and value encoding, one pipelined HMGET per poll; at the
end a sample is checked against `FeatureStore.get_online_features`). Every measured click is on an
item of its own, so "visible" means: `item_clicks_15m` of that item is no longer 0.

What bounds it (reported separately in the JSON):
- `window_wait`: a click at event time t counts first in the window [end − 15 min, end) with
  end = the next whole minute after t; that window's value is stamped `end` and cannot be known
  before `end`. So 0–60 s (uniform over the minute, mean 30 s) is the specification, not a delay.
- `after_window_end`: from `end` until visible: the watermark passing `end` (bounded
  out-of-orderness, 2 s, and the next event on every partition after that instant), the checkpoint
  interval of the transactional sink (5 s), the pusher's poll and Feast's push, and our poll (50 ms).

It runs on a stack of its own (`<home>/bench/freshness`, ports +2000, no MLflow), wiped at every start:
its events carry wall-clock event times, and on the demo stack they would move the feature job's
watermark years past the simulated world's clock, so that every later simulated event would be late.
Background traffic (a click and an impression per ticker user, on a ticker item, every 0.5 s) keeps
every partition's watermark moving, as live traffic would.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import uuid
from datetime import datetime, timezone

import numpy as np

from eightbox.settings import Settings

PORT_SHIFT = 2000
SERVICES = ("kafka", "flink-jobmanager", "flink-taskmanager", "redis", "pusher")


def bench_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={
        "home": settings.home / "bench" / "freshness", "env": settings.env,
        "kafka_bootstrap": None, "redis_url": None, "flink_jobmanager": None,
        **{k: getattr(settings, k) + PORT_SHIFT for k in
           ("kafka_port", "kafka_controller_port", "redis_port", "flink_rest_port", "flink_rpc_port")}})


def _pct(values, q) -> float:
    return round(float(np.percentile(values, q)) * 1000, 1) if len(values) else float("nan")


def run(settings: Settings, quick: bool = False, keep_stack: bool = False) -> dict:
    from eightbox.deploy.pusher_service import stack_services
    from eightbox.deploy.supervisor import Supervisor
    from eightbox.features.online import OnlineReader
    from eightbox.features.stream import control
    from eightbox.features.stream.sql import JobOptions
    from eightbox.ingest.producer import EventProducer
    from eightbox.ingest.schema import ImpressionServed, ItemClicked

    n_events, span_s = (500, 60.0) if quick else (3000, 300.0)
    wall0 = time.monotonic()
    bench = bench_settings(settings)
    supervisor = Supervisor(bench, stack_services(bench, only=SERVICES))
    supervisor.down(progress=lambda *_: None)  # what an interrupted earlier run left
    for sub in ("data", "run", "lake", "feast"):
        shutil.rmtree(bench.home / sub, ignore_errors=True)
    print(f"bench freshness: starting a stack of its own under {bench.home} ...", flush=True)
    supervisor.up(progress=lambda m: print(f"  {m}", flush=True))
    opts = JobOptions(kafka_servers=bench.kafka_servers)
    job_id = control.start(bench, opts=opts)
    control.wait_state(bench, job_id, {"RUNNING"}, timeout=90)
    print(f"  flink feature job {job_id} RUNNING (watermark bound {opts.out_of_orderness_s:g} s, "
          f"checkpoints every {opts.checkpoint_interval_s:g} s, exactly-once sink)", flush=True)

    run_id = uuid.uuid4().hex[:6]
    producer = EventProducer(bench, source="bench-freshness")
    reader = OnlineReader(bench, ["item_session:item_clicks_15m"])
    stop_ticker = threading.Event()
    lock = threading.Lock()

    def now() -> tuple[float, datetime]:
        t = time.time()
        return t, datetime.fromtimestamp(t, timezone.utc)

    def ticker() -> None:  # background traffic on every partition, so that watermarks advance
        while not stop_ticker.is_set():
            _, et = now()
            with lock:
                for k in range(36):
                    user = f"fbtick{k}"
                    producer.publish(ItemClicked(event_time=et, user_id=user, item_id=f"fbtick-{run_id}"))
                    producer.publish(ImpressionServed(event_time=et, request_id="bench", user_id=user,
                                                      item_id=f"fbtick-{run_id}", position=0, surface="home"))
                producer.flush()
            stop_ticker.wait(0.5)

    tick = threading.Thread(target=ticker, daemon=True)
    tick.start()

    # Warm-up: the first window through the whole path (job start-up, first checkpoint, pusher join).
    print("  warm-up: waiting for the first window to come through ...", flush=True)
    warm = f"fbwarm-{run_id}"
    with lock:
        producer.publish(ItemClicked(event_time=now()[1], user_id="fbwarm", item_id=warm))
        producer.flush()
    deadline = time.monotonic() + 180
    while not reader.read_rows({"item_id": [warm]})["item_clicks_15m"][0]:  # 0: not counted yet
        if time.monotonic() > deadline:
            raise RuntimeError("bench freshness: nothing became visible within 180 s of warm-up")
        time.sleep(0.2)
    setup_s = time.monotonic() - wall0
    print(f"  ready after {setup_s:.0f} s; measuring {n_events} clicks over {span_s:.0f} s ...", flush=True)

    sent_at = np.full(n_events, np.nan)
    event_time = np.full(n_events, np.nan)
    visible_at = np.full(n_events, np.nan)
    items = [f"fb-{run_id}-{k}" for k in range(n_events)]
    done = threading.Event()

    def poller() -> None:
        while not done.is_set():
            pending = [k for k in range(n_events) if not np.isnan(sent_at[k]) and np.isnan(visible_at[k])]
            if pending:
                values = reader.read_rows({"item_id": [items[k] for k in pending]})["item_clicks_15m"]
                t = time.time()
                for k, v in zip(pending, values):
                    if v:  # each item has one click: visible once its count is not 0
                        visible_at[k] = t
            time.sleep(0.05)

    poll = threading.Thread(target=poller, daemon=True)
    poll.start()
    start = time.monotonic()
    for k in range(n_events):
        due = start + span_s * k / n_events
        while time.monotonic() < due:
            time.sleep(min(0.01, due - time.monotonic()))
        with lock:
            t, et = now()
            producer.publish(ItemClicked(event_time=et, user_id=f"fbu{k % 97}", item_id=items[k]))
            sent_at[k], event_time[k] = t, et.timestamp()
            if k % 10 == 9:
                producer.flush()
        if k and k % max(1, n_events // 5) == 0:
            print(f"    sent {k}/{n_events}, visible so far {int(np.sum(~np.isnan(visible_at)))}", flush=True)
    with lock:
        producer.flush()
    deadline = time.monotonic() + 60 + 60  # the last click's window ends within 60 s, then the pipeline
    while np.isnan(visible_at).any() and time.monotonic() < deadline:
        time.sleep(0.2)
    done.set()
    poll.join()
    stop_ticker.set()
    tick.join()
    producer.close()

    # Cross-check a sample through Feast's own online read.
    store = reader.store
    sample = items[:: max(1, n_events // 20)]
    feast = store.get_online_features(features=["item_session:item_clicks_15m"],
                                      entity_rows=[{"item_id": i} for i in sample]).to_dict()
    ours = reader.read_rows({"item_id": sample})
    feast_agrees = feast["item_clicks_15m"] == ours["item_clicks_15m"]

    ok = ~np.isnan(visible_at)
    latency = (visible_at - sent_at)[ok]
    ends = np.floor(event_time / 60.0) * 60.0 + 60.0  # the first window end strictly after t
    window_wait = (ends - event_time)[ok]
    after_end = (visible_at - ends)[ok]
    if not keep_stack:
        try:
            control.stop(bench, job_id, savepoint=False)
        except control.StreamJobError:
            pass
        supervisor.down(progress=lambda *_: None)
    result = {
        "events": int(n_events), "visible": int(ok.sum()), "read_path": "OnlineReader (Feast Redis keys)",
        "feast_sample_agrees": bool(feast_agrees),
        "p50_ms": _pct(latency, 50), "p90_ms": _pct(latency, 90), "p99_ms": _pct(latency, 99),
        "max_ms": _pct(latency, 100),
        "window_wait_p50_ms": _pct(window_wait, 50), "window_wait_p99_ms": _pct(window_wait, 99),
        "after_window_end_p50_ms": _pct(after_end, 50), "after_window_end_p99_ms": _pct(after_end, 99),
        "after_window_end_min_ms": _pct(after_end, 0),
        "watermark_bound_s": opts.out_of_orderness_s, "checkpoint_interval_s": opts.checkpoint_interval_s,
        "window_slide_s": 60, "setup_s": round(setup_s, 1), "wall_s": round(time.monotonic() - wall0, 1),
    }
    print(json.dumps(result))
    return result
