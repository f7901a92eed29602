"""The closed loop: simulated days of marketplace traffic through every box, with a drift, its
detection, a retrain, the promotion ladder and the recovery.

Day 0 (the last of `history_days`) is the world before Eightbox: a popularity policy's traffic
published straight to Kafka, archived, featurised (Flink, nightly Spark, Feast), and the first
model trained and made champion.
From day 1 every visit asks the serving API (`POST /recommend`, stamped with the simulated time),
the simulated user answers the slate it got, and the clicks and engagements go back through
`POST /events` when their simulated time comes (engagements arrive minutes to hours later: label
delay). Each day is served in ticks; after each tick the lake archiver lands the events and the
ladder (if a model is climbing) takes its step. After each day: the nightly Spark backfill, the
monitoring job over the day, and a retrain whose candidate starts up the ladder, when the schedule
says so (`retrain_every_days`) or the monitoring found concept drift (`monitoring.concept_checks`;
the day it first does so on or after the drift day is when the drift was detected, and days before
the drift with such an alert are false alarms). The other alerts are the report's diagnosis.

On the same visits the loop also scores what the popularity policy and the oracle (the simulator's
true click probabilities) would have shown, so each day has three CTRs, expected (the mean true
click probability of the slate as shown, position bias included: no sampling noise), plus the
realised CTR of what we served. The drift (`SimConfig.drift_at`) moves every user's taste on
`drift_day`.
"""

from __future__ import annotations

import heapq
import itertools
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from eightbox.settings import Settings
from eightbox.training.promotion import LadderConfig


@dataclass(frozen=True)
class LoopProfile:
    days: int = 6  # served days after day 0
    drift_day: int = 3  # the taste drift starts at the beginning of this day
    drift_strength: float = 1.0
    sessions_per_hour: float = 40.0
    world: dict = field(default_factory=dict)  # SimConfig overrides
    ticks_per_day: int = 4
    tower_epochs: int = 6
    seed: int = 7
    # Days of popularity traffic before the first model ("day 0" is the last). With one, no daily
    # counter exists yet when its examples happen, so the first model learned from the session
    # windows alone (all its ranker's gain besides position), which the accelerated clock serves
    # hours stale by an amount that depends on load: the same model served day 1 at 0.058-0.089.
    history_days: int = 2
    nightly_spark: bool = True  # on served days (day 0 always runs it: the first training needs it)
    train_window_days: float | None = 1.0  # a retrain learns from this many recent days (None: all)
    # The nightly retrain: a model goes stale within a day here (its own exposure moves the
    # counters it reads); None retrains on concept-drift alerts only.
    retrain_every_days: int | None = 1
    # Half the users on the canary: at a few hundred visits a day a 20 % arm sees too little to judge.
    ladder: LadderConfig = LadderConfig(shadow_hours=6, canary_hours=6, holdback_hours=12, canary_share=0.5,
                                        min_shadow_requests=30, min_arm_impressions=300)


# The worlds are small on purpose: in a 2,000-user world the champion's bag of recent engagements
# followed the drifted tastes by itself (CTR 0.127 → 0.116 over four days, `eightbox demo` before this
# profile), so nothing needed retraining; fewer items per category make the stale model's loss visible.
SMALL_WORLD = dict(n_users=500, n_items=400, n_creators=60)
TINY_WORLD = dict(n_users=250, n_items=200, n_creators=40, new_users_per_hour=4.0, new_items_per_hour=1.0)
FULL = LoopProfile(world=SMALL_WORLD)
# A day of the tiny world is ~5,700 impressions: retrains learn from two (0.950 → 0.996 recovered in
# one run each of tests/integration/test_closed_loop.py).
QUICK = LoopProfile(days=4, drift_day=2, sessions_per_hour=20.0, tower_epochs=4, world=TINY_WORLD, train_window_days=2.0,
                    ladder=LadderConfig(shadow_hours=6, canary_hours=6, holdback_hours=6, canary_share=0.5,
                                        min_shadow_requests=10, min_arm_impressions=300))


@dataclass
class DayRow:
    day: int
    date: str
    requests: int = 0
    shown: int = 0
    clicks: int = 0
    ctr_expected: float = 0.0  # ours, the slate as served
    ctr_popularity: float = 0.0
    ctr_oracle: float = 0.0
    p99_ms: float = float("nan")
    rungs: dict = field(default_factory=dict)
    arms: dict = field(default_factory=dict)
    alerts: list = field(default_factory=list)
    drift_alerts: list = field(default_factory=list)  # concept drift: what detects the taste drift
    notes: list = field(default_factory=list)

    @property
    def ctr(self) -> float:
        return self.clicks / self.shown if self.shown else float("nan")


class Traffic:
    """Serves visits through the API and returns users' actions through /events at their own time.

    On simulated time (the loop) each request carries its visit's time and the clock runs as fast as
    the API answers. `live`: the market's clock is the wall clock (its start is now), each visit waits
    for its moment, requests carry no time (the server stamps them), and actions are posted when
    their moment comes (`eightbox traffic`)."""

    def __init__(self, settings: Settings, market, http, live: bool = False):
        from eightbox.ingest.simulator.policies import oracle_policy, popularity_policy

        self.settings, self.market, self.http, self.live = settings, market, http, live
        self.pop, self.oracle = popularity_policy(market), oracle_policy(market)
        from eightbox.ingest.producer import EventProducer

        # /events takes what clients report (clicks, engagements); signups and new items come from
        # the account and catalog services, which publish through the ingest gateway themselves.
        self.backend = EventProducer(settings, source="marketplace-backend")
        self.pending: list = []  # (event_time, n, event): actions whose simulated time has not come
        self.buffer: list = []
        self._n = itertools.count()

    def _expected(self, user: str, at: datetime, slate: list[str]) -> float:
        if not slate:
            return 0.0
        return float(self.market.click_probabilities(user, slate, np.arange(len(slate)), at).mean())

    def _release(self, until: datetime) -> None:
        while self.pending and self.pending[0][0] <= until:
            self.buffer.append(heapq.heappop(self.pending)[2])
        if len(self.buffer) >= self.settings.serving_max_events_per_request:
            self.flush()

    def flush(self) -> None:
        step = self.settings.serving_max_events_per_request
        for i in range(0, len(self.buffer), step):
            chunk = self.buffer[i:i + step]
            r = self.http.post("/events", content="[" + ",".join(e.model_dump_json() for e in chunk) + "]",
                               headers={"content-type": "application/json"})
            if r.status_code != 202:
                raise RuntimeError(f"/events refused a batch: {r.status_code} {r.text[:300]}")
        self.buffer = []

    def _wait_until(self, at: datetime) -> None:
        """Live: sleep until `at`, posting the actions that come due meanwhile."""
        from datetime import timezone

        while (left := (at - datetime.now(timezone.utc)).total_seconds()) > 0:
            self._release(datetime.now(timezone.utc))
            self.flush()
            time.sleep(min(left, 1.0))

    def serve(self, hours: float, row: DayRow, latencies: list[float]) -> None:
        from eightbox.ingest.simulator import Visit

        k = self.market.config.slate_size
        for x in self.market.visits(hours):
            at = getattr(x, "at", None) or x.event_time
            if self.live:
                self._wait_until(at)
            self._release(at)
            if not isinstance(x, Visit):  # a signup or a new item: backend events, straight to the gateway
                self.backend.publish(x)
                continue
            t = time.perf_counter()
            context = {} if self.live else {"request_time": x.at.isoformat()}
            r = self.http.post("/recommend", json={"user_id": x.user_id, "k": k, "context": context})
            latencies.append((time.perf_counter() - t) * 1000)
            if r.status_code != 200:
                row.rungs[str(r.status_code)] = row.rungs.get(str(r.status_code), 0) + 1
                continue
            body = r.json()
            row.rungs[body["rung"]] = row.rungs.get(body["rung"], 0) + 1
            arm = body["explanation"].get("experiment_arm", "?")
            row.arms[arm] = row.arms.get(arm, 0) + 1
            known = set(self.market.candidates)
            slate = [i["item_id"] for i in body["items"] if i["item_id"] in known]
            cands = self.market.candidates
            row.requests += 1
            row.ctr_expected += self._expected(x.user_id, x.at, slate)
            row.ctr_popularity += self._expected(x.user_id, x.at, self.pop(x.user_id, x.at, cands, k))
            row.ctr_oracle += self._expected(x.user_id, x.at, self.oracle(x.user_id, x.at, cands, k))
            if not slate:
                continue
            row.shown += len(slate)
            for e in self.market.respond(x, slate):
                if e.event_type == "impression_served":
                    continue  # the server logged its own, with the features it scored
                row.clicks += e.event_type == "item_clicked"
                # The client quotes the server's request id on what follows a slate: labels join on it.
                e = e.model_copy(update={"request_id": body["request_id"]})
                heapq.heappush(self.pending, (e.event_time, next(self._n), e))
        self._release(self.market.now)
        self.flush()
        self.backend.flush()


def _archive(settings: Settings) -> int:
    from eightbox.ingest.archiver import LakeArchiver

    return LakeArchiver(settings).run(idle_exit_s=2.0)


def _reload(http, settings: Settings) -> None:
    token = sorted(settings.admin_tokens)[0]
    r = http.post("/admin/reload", headers={"Authorization": f"Bearer {token}"})
    if r.status_code not in (200, 404):
        print(f"  (reload answered {r.status_code}: {r.text[:200]})")


def _monitor(settings: Settings, start: datetime, end: datetime, report_path) -> tuple[list, Any]:
    from eightbox.monitoring.job import run_monitoring
    from eightbox.monitoring.report import write_report

    # No log line per alert (~35 a day would flood the demo): the loop prints the day's count and its
    # concept-drift alerts, and the page lists them all.
    result = run_monitoring(settings, start, end, kafka_lag=False, log_alerts=False)
    write_report(result, report_path)
    return result.alerts, result


def run_loop(settings: Settings, profile: LoopProfile, *, bootstrap, header=lambda *a: None) -> dict:
    """Days 1..profile.days on a stack whose day 0 `bootstrap(market)` has built (traffic published,
    first champion registered). Returns the summary (also the bench's JSON)."""
    import httpx

    from eightbox.deploy.serving_service import base_url
    from eightbox.monitoring.concept_checks import CHECK as CONCEPT_DRIFT
    from eightbox.training.ladder_evidence import from_lake
    from eightbox.training.controller import retrain
    from eightbox.training.ladder_runner import LadderRunner
    from eightbox.training.retrain_trigger import retrain_reason

    started = time.monotonic()
    market, leftovers = bootstrap()
    start = market.config.start + timedelta(days=profile.history_days - 1)  # day 0's
    drift_at = start + timedelta(days=profile.drift_day)
    ladder = LadderRunner(settings, from_lake(settings), profile.ladder, model_name=settings.serving_model_name)
    rows: list[DayRow] = []
    latencies_all: list[float] = []
    detected_at = None
    retrains: list[datetime] = []
    last_retrain = start + timedelta(days=1)  # day 0's model, trained at its end
    promotions: list[tuple[datetime, datetime]] = []  # (promoted at, the newest data its model learned from)
    learned_until: dict[str, datetime] = {}  # version → as_of of its training
    sources: list[str] = []  # where each retrain's examples came from ("logged": serving's own impressions)
    reports = settings.home / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    tick = 24.0 / profile.ticks_per_day
    with httpx.Client(base_url=base_url(settings), timeout=30.0) as http:
        _reload(http, settings)
        traffic = Traffic(settings, market, http)
        for e in leftovers:  # day 0's actions still in the future (engagements after late clicks)
            heapq.heappush(traffic.pending, (e.event_time, next(traffic._n), e))
        for day in range(1, profile.days + 1):
            day_start = start + timedelta(days=day)
            day_end = day_start + timedelta(days=1)
            row = DayRow(day, f"{day_start:%Y-%m-%d}")
            header("7", "serving", f"day {day}{' · drift' if day == profile.drift_day else ''}")
            latencies: list[float] = []
            for n in range(profile.ticks_per_day):
                traffic.serve(tick, row, latencies)
                _archive(settings)
                now = day_start + timedelta(hours=tick * (n + 1))
                if ladder.active:
                    before = ladder.state.rung
                    decision = ladder.step(now)
                    if decision.action != "wait":
                        note = f"{now:%m-%d %H:%M} v{ladder.state.version}: {before} → {ladder.state.rung}"
                        row.notes.append(note)
                        print(f"  ladder {note} ({'; '.join(decision.reasons)})")
                        if decision.action == "promote":
                            promotions.append((now, learned_until[ladder.state.version]))
                        _reload(http, settings)
            row.p99_ms = float(np.percentile(latencies, 99)) if latencies else float("nan")
            latencies_all += latencies
            for attr in ("ctr_expected", "ctr_popularity", "ctr_oracle"):
                setattr(row, attr, getattr(row, attr) / max(row.requests, 1))
            print(f"  {row.requests} requests (p99 {row.p99_ms:.1f} ms, rungs {row.rungs}, arms {row.arms}); "
                  f"CTR ours {row.ctr_expected:.4f} (realised {row.ctr:.4f}), popularity {row.ctr_popularity:.4f}, "
                  f"oracle {row.ctr_oracle:.4f}")
            if profile.nightly_spark:
                header("2", "feature pipeline", "nightly Spark backfill")
                from eightbox.demo import _backfill_and_materialize

                _backfill_and_materialize(settings, day_start.date(), day_start.date())
            header("8", "monitoring", f"day {day}")
            report = reports / f"monitoring-day{day}.html"
            alerts, _ = _monitor(settings, day_start, day_end, report)
            row.alerts = [a.alert for a in alerts]
            row.drift_alerts = [a.alert for a in alerts if a.check == CONCEPT_DRIFT]
            layers = dict(Counter(a.layer for a in alerts))
            print(f"  {len(alerts)} alert(s) {layers or ''}; concept drift: "
                  f"{'; '.join(row.drift_alerts) or 'none'}  report: {report}")
            if row.drift_alerts and day >= profile.drift_day and detected_at is None:
                detected_at = day_end
            every = timedelta(days=profile.retrain_every_days) if profile.retrain_every_days else None
            why = retrain_reason(day_end, last_retrain, every, len(row.drift_alerts))
            if why and not ladder.active:
                header("4", "training", f"retrain after day {day} ({why})")
                last_retrain = day_end
                window = timedelta(days=profile.train_window_days) if profile.train_window_days else None
                done = retrain(settings, day_end, why, window=window, tower_epochs=profile.tower_epochs,
                               progress=lambda m: print(f"  {m}", flush=True))
                retrains.append(day_end)
                sources.append(done.source)
                learned_until[done.version] = day_end
                if done.challenger:
                    ladder.start(done.version, day_end)
                    ladder.step(day_end)  # shadow starts with the next request, not the next tick
                    _reload(http, settings)
                row.notes.append(done.note)
                print(f"  {row.notes[-1]}")
            rows.append(row)
        traffic.backend.close()
    summary = summarise(rows, profile, detected_at=detected_at, drift_at=drift_at, retrains=retrains,
                        promotions=promotions, latencies=latencies_all, wall_s=time.monotonic() - started,
                        report=str(reports / "loop.html"))
    summary["retrain_sources"] = sources
    from eightbox.loop_report import write_loop_report

    write_loop_report(summary, profile.drift_day, reports / "loop.html")
    (reports / "loop.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


def summarise(rows: list[DayRow], profile: LoopProfile, *, detected_at, drift_at, retrains, promotions,
              latencies, wall_s, report) -> dict:
    pre = [r.ctr_expected for r in rows if r.day < profile.drift_day]
    last = rows[-1] if rows else None
    pre_ctr = float(np.mean(pre)) if pre else float("nan")
    # "After recovery": the days served wholly after a model that learned from drifted traffic took
    # over (the last day when none did, or none is whole yet).
    took_over = min((at for at, until in promotions if until > drift_at), default=None)
    after = [r for r in rows if took_over is not None
             and datetime.fromisoformat(r.date).replace(tzinfo=took_over.tzinfo) >= took_over] or rows[-1:]
    return {
        "days": [asdict(r) | {"ctr": r.ctr} for r in rows],
        "drift_detected": detected_at is not None,
        "drift_alert_days": [r.day for r in rows if r.drift_alerts],
        "false_alarm_days": [r.day for r in rows if r.drift_alerts and r.day < profile.drift_day],
        "detected_after_hours": (detected_at - drift_at) / timedelta(hours=1) if detected_at else None,
        "retrains": [t.isoformat() for t in retrains],
        "promotions": [at.isoformat() for at, _ in promotions],
        "promoted": any(until > drift_at for _, until in promotions),  # a model that learned from drifted traffic took over
        "recovered_ratio": float(np.mean([r.ctr_expected for r in after])) / pre_ctr if after and pre_ctr else None,
        "recovery_days": [r.day for r in after],
        "ctr_vs_oracle": last.ctr_expected / last.ctr_oracle if last and last.ctr_oracle else None,
        "ctr_vs_popularity": last.ctr_expected / last.ctr_popularity if last and last.ctr_popularity else None,
        "serving_p99_ms": float(np.percentile(latencies, 99)) if latencies else None,
        "report": report,
        "wall_s": round(wall_s, 1),
    }


def summary_line(summary: dict) -> str:
    """The summary without its per-day rows, as one JSON line (the bench's last line)."""
    return json.dumps({k: v for k, v in summary.items() if k != "days"})


def _events_cell(day: dict) -> str:
    """The summary table's last column: a concept-drift mark first (the notes are long), then the notes."""
    return "; ".join((["CONCEPT DRIFT"] if day.get("drift_alerts") else []) + day["notes"])


def print_summary(summary: dict) -> None:
    print(f"\n{'day':>4} {'date':>10} {'ours':>7} {'realised':>8} {'popular':>7} {'oracle':>7} {'p99 ms':>7}  events")
    for d in summary["days"]:
        print(f"{d['day']:>4} {d['date']:>10} {d['ctr_expected']:>7.4f} {d['ctr']:>8.4f} {d['ctr_popularity']:>7.4f} "
              f"{d['ctr_oracle']:>7.4f} {d['p99_ms']:>7.1f}  {_events_cell(d)[:120]}")
    print(summary_line(summary))
