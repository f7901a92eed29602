"""`eightbox traffic`: simulated users on the wall clock, for a platform that `eightbox up` runs.

The demo's loop serves its visits on simulated time. Here the market's clock is the wall clock: each
visit asks `POST /recommend` when its moment comes (the server stamps it), and the user's clicks and
engagements go back through `POST /events` when theirs do. So the services of the wall-clock loop see
live traffic: the archiver lands the impressions serving logged, the monitoring service checks them,
the controller retrains and the ladder's shadow, canary and holdback judge real arms. Every
`report_minutes` it prints what was served, beside what the popularity policy and the oracle would
have shown the same visits (expected CTRs, position bias included).
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

from eightbox.settings import Settings


def run_live(settings: Settings, *, hours: float, sessions_per_hour: float, seed: int, quick: bool,
             history_hours: float = 0.0, report_minutes: float = 5.0, progress=print) -> dict:
    """Serve `hours` of live traffic; returns the totals (requests, rungs, arms, CTRs).

    `history_hours`: the world is the one `eightbox simulate --until-now --hours H` (same seed and
    size) published, replayed without publishing up to now, so its users and items are the ones the
    platform learnt; a model recommends items that only that world has. Without it, a new world
    starts now and its users and catalog are published first."""
    import httpx

    from eightbox.deploy.serving_service import base_url
    from eightbox.ingest.publish import QUICK_WORLD
    from eightbox.ingest.simulator import Marketplace, SimConfig

    from .loop import DayRow, Traffic

    start = datetime.now(timezone.utc) - timedelta(hours=history_hours)
    market = Marketplace(SimConfig(seed=seed, start=start, **(QUICK_WORLD if quick else {})))
    if history_hours:
        progress(f"replaying the world's first {history_hours:g} h (published by `eightbox simulate --until-now`) ...")
        for _ in market.simulate(hours=history_hours):
            pass
    market.set_sessions_per_hour(sessions_per_hour)
    total, latencies = DayRow(0, f"{market.now:%Y-%m-%d}"), []
    with httpx.Client(base_url=base_url(settings), timeout=30.0) as http:
        if http.get("/healthz").status_code != 200:
            raise RuntimeError(f"serving at {base_url(settings)} is not healthy: run `eightbox up` first")
        traffic = Traffic(settings, market, http, live=True)
        for event in [] if history_hours else market.bootstrap_events():  # a new world's users and catalog
            traffic.backend.publish(event)
        traffic.backend.flush()
        progress(f"live traffic for {hours:g} h at {sessions_per_hour:g} sessions/hour against {base_url(settings)}")
        started, chunk = time.monotonic(), report_minutes / 60.0
        served = 0.0
        while served < hours:
            row = DayRow(0, "")
            traffic.serve(min(chunk, hours - served), row, latencies)
            served += chunk
            _add(total, row)
            progress(f"  {datetime.now(timezone.utc):%H:%M:%S} {_line(row)}")
        traffic.backend.close()
    progress(f"total: {_line(total)}; {time.monotonic() - started:.0f} s")
    return {"requests": total.requests, "rungs": total.rungs, "arms": total.arms, "ctr": total.ctr,
            "ctr_expected": total.ctr_expected / max(total.requests, 1)}


def _add(total, row) -> None:
    for attr in ("requests", "shown", "clicks", "ctr_expected", "ctr_popularity", "ctr_oracle"):
        setattr(total, attr, getattr(total, attr) + getattr(row, attr))
    for attr in ("rungs", "arms"):
        for k, v in getattr(row, attr).items():
            getattr(total, attr)[k] = getattr(total, attr).get(k, 0) + v


def _line(row) -> str:
    n = max(row.requests, 1)
    return (f"{row.requests} requests, rungs {row.rungs}, arms {row.arms}; CTR ours {row.ctr_expected / n:.4f} "
            f"(realised {row.ctr:.4f}), popularity {row.ctr_popularity / n:.4f}, oracle {row.ctr_oracle / n:.4f}")
