"""Temporal splits: windows decided by event time, each strictly after the one before, never random."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest

from eightbox.training.splits import SPLITS, assign, by_fractions, by_times, split

T0 = datetime(2024, 5, 1, tzinfo=timezone.utc)
DAY = timedelta(days=1)


def examples(n=500, seed=1):
    rng = np.random.default_rng(seed)
    times = [T0 + timedelta(seconds=int(s)) for s in rng.integers(0, 10 * 86_400, size=n)]
    return pd.DataFrame({"example_id": [f"x{i}" for i in range(n)],
                         "event_time": pd.to_datetime(times, utc=True), "click": rng.integers(0, 2, size=n)})


@pytest.mark.parametrize("gap", [timedelta(0), timedelta(hours=6)])
def test_test_windows_are_strictly_after_validation_strictly_after_training(gap):
    df = examples()
    parts = split(df, by_fractions(df["event_time"], (0.6, 0.2, 0.2), gap=gap))
    train, valid, test = (parts[s]["event_time"] for s in SPLITS)
    assert train.max() < valid.min() and valid.max() < test.min()
    if gap:
        assert valid.min() - train.max() >= gap and test.min() - valid.max() >= gap
    else:  # without a gap nothing is dropped: the three windows cover the range
        assert sum(len(p) for p in parts.values()) == len(df)
    assert df["event_time"].max() in set(test)  # the last event is in the test window


def test_an_examples_window_is_decided_by_its_event_time_alone_not_by_row_order():
    df = examples()
    windows = by_fractions(df["event_time"])
    shuffled = df.sample(frac=1.0, random_state=4)
    a, b = split(df, windows), split(shuffled, windows)
    for s in SPLITS:
        assert set(a[s]["example_id"]) == set(b[s]["example_id"])
    assert list(b["train"]["example_id"]) == [x for x in shuffled["example_id"] if x in set(a["train"]["example_id"])]


def test_windows_by_timestamps_are_half_open_and_rows_in_gaps_belong_to_no_split():
    w = by_times(T0, T0 + 4 * DAY, T0 + 6 * DAY, T0 + 8 * DAY, gap=timedelta(hours=1))
    times = pd.Series(pd.to_datetime([T0, T0 + 4 * DAY - timedelta(microseconds=1), T0 + 4 * DAY,
                                      T0 + 4 * DAY + timedelta(hours=1), T0 + 6 * DAY + timedelta(hours=1),
                                      T0 + 8 * DAY, T0 - timedelta(seconds=1)], utc=True))
    assert list(assign(times, w)) == ["train", "train", None, "valid", "test", None, None]
    assert w.to_dict()["valid"] == {"start": "2024-05-05T01:00:00+00:00", "end": "2024-05-07T00:00:00+00:00"}


def test_naive_and_offset_timestamps_mean_the_same_utc_instants():
    w = by_times("2024-05-01", "2024-05-02T02:00:00+02:00", datetime(2024, 5, 3), "2024-05-04T00:00:00Z")
    assert w.train.end == pd.Timestamp("2024-05-02T00:00:00Z")


@pytest.mark.parametrize("bounds, message", [
    ((T0, T0 + 2 * DAY, T0 + DAY, T0 + 3 * DAY), "must strictly increase"),
    ((T0, T0 + DAY, T0 + DAY, T0 + 3 * DAY), "must strictly increase"),
])
def test_out_of_order_boundaries_are_refused_clearly(bounds, message):
    with pytest.raises(ValueError, match=message):
        by_times(*bounds)


def test_a_gap_that_swallows_a_window_or_a_negative_gap_is_refused():
    with pytest.raises(ValueError, match="the valid window is empty"):
        by_times(T0, T0 + DAY, T0 + 2 * DAY, T0 + 3 * DAY, gap=DAY)
    with pytest.raises(ValueError, match="gap must not be negative"):
        by_times(T0, T0 + DAY, T0 + 2 * DAY, T0 + 3 * DAY, gap=-DAY)
    with pytest.raises(ValueError, match="does not fit the time range"):
        by_fractions([T0, T0 + 10 * DAY], (0.8, 0.1, 0.1), gap=2 * DAY)


@pytest.mark.parametrize("fractions", [(0.8, 0.2), (0.7, 0.2, 0.2), (1.0, 0.0, 0.0), (0.9, -0.1, 0.2)])
def test_fractions_must_be_three_positive_shares_of_one(fractions):
    with pytest.raises(ValueError, match="three positive numbers"):
        by_fractions([T0, T0 + DAY], fractions)


def test_a_single_instant_or_no_times_cannot_be_split():
    with pytest.raises(ValueError, match="single instant"):
        by_fractions([T0, T0])
    with pytest.raises(ValueError, match="no event times"):
        by_fractions([])


def test_fractions_are_of_the_time_span_not_of_the_rows():
    # 90 rows on day 0, 10 rows spread over days 1..9: a 50% time cut keeps the crowded day in train.
    times = [T0] * 90 + [T0 + i * DAY for i in range(1, 11)]
    w = by_fractions(times, (0.5, 0.25, 0.25))
    assert w.train.end == T0 + 5 * DAY and w.valid.end == T0 + 7.5 * DAY
