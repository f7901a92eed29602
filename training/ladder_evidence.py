"""The promotion ladder's evidence, read from the lake: what each arm served and what users did.

For a rung that began at ``state.since`` and is judged at ``now``:

- arms: impressions in [since, now) grouped by ``experiment_arm``, and their clicks (joined on
  request_id + item_id). A click counts only when it lands within ``attribution`` of its impression
  and before ``now``: the evidence never peeks past the clock the ladder runs on.
- shadow: ShadowScored events in [since, now): how many requests, the PSI of the challenger's scores
  against the champion's deciles, both tail latencies (`tail_quantile`), and how many distinct
  scores the challenger gave.

Arm stats carry no latency or error counts yet (impressions do not record them), so the canary's
guardrails judge CTR; latency is judged in shadow, where both models answer the same requests.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from eightbox.settings import Settings

from .promotion import ArmStats, Evidence, LadderState, ShadowStats, tail_quantile


def _window(settings: Settings, event_type: str, start: datetime, end: datetime) -> pd.DataFrame:
    from eightbox.ingest.lake import read_events

    df = read_events(settings.lake_dir, event_type).to_pandas()
    if df.empty:
        return df
    t = pd.to_datetime(df["event_time"], utc=True)
    return df[(t >= pd.Timestamp(start)) & (t < pd.Timestamp(end))]


def arm_stats(impressions: pd.DataFrame, clicks: pd.DataFrame, attribution: timedelta) -> dict[str, ArmStats]:
    """Impressions and attributed clicks per experiment arm (the team, for interleaved lists)."""
    if impressions.empty:
        return {}
    imps = impressions.assign(arm=impressions["team"].fillna(impressions["experiment_arm"])
                              if "team" in impressions else impressions["experiment_arm"])
    clicked = clicks[["request_id", "item_id", "event_time"]].dropna(subset=["request_id"]) \
        .rename(columns={"event_time": "clicked_at"}).drop_duplicates(["request_id", "item_id"])
    joined = imps.merge(clicked, on=["request_id", "item_id"], how="left")
    delay = pd.to_datetime(joined["clicked_at"], utc=True) - pd.to_datetime(joined["event_time"], utc=True)
    joined["click"] = delay.notna() & (delay >= pd.Timedelta(0)) & (delay <= pd.Timedelta(attribution))
    out = {}
    for arm, g in joined.groupby("arm"):
        out[str(arm)] = ArmStats(impressions=len(g), clicks=int(g["click"].sum()), requests=g["request_id"].nunique())
    return out


def shadow_stats(shadow: pd.DataFrame) -> ShadowStats:
    if shadow.empty:
        return ShadowStats()
    from eightbox.monitoring.psi import numeric_psi
    from eightbox.training.reference import numeric_summary

    champ = [s for row in shadow["champion_scores"] for s in row if s is not None]
    chall = [s for row in shadow["challenger_scores"] for s in row if s is not None]
    summary = numeric_summary(champ)
    q = tail_quantile(len(shadow))
    return ShadowStats(requests=len(shadow), score_psi=numeric_psi(summary, chall) if chall else math.nan,
                       challenger_tail_ms=float(np.quantile(shadow["challenger_latency_ms"], q)),
                       champion_tail_ms=float(np.quantile(shadow["champion_latency_ms"], q)),
                       distinct_scores=len(set(np.round(chall, 9))) if chall else 0)


def from_lake(settings: Settings, attribution: timedelta = timedelta(hours=1)):
    """An evidence function for `LadderRunner`: the arms compared depend on the rung."""

    def evidence(state: LadderState, now: datetime) -> Evidence:
        if state.rung == "shadow":
            return Evidence(shadow=shadow_stats(_window(settings, "shadow_scored", state.since, now)))
        arms = arm_stats(_window(settings, "impression_served", state.since, now),
                         _window(settings, "item_clicked", state.since, now), attribution)
        if state.rung == "canary":
            return Evidence(champion=arms.get("champion", ArmStats()), challenger=arms.get("challenger", ArmStats()))
        if state.rung == "champion":  # the new champion on trial against the holdback (the old one)
            return Evidence(champion=arms.get("holdback", ArmStats()), challenger=arms.get("champion", ArmStats()))
        return Evidence()

    return evidence
