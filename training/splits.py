"""Temporal train / validation / test windows: the model is always judged on a later time than it
learned from, never on a random shuffle of the same days.

A window is half-open, ``[start, end)``, in UTC. The three windows follow each other: ``valid``
starts at ``train.end + gap`` and ``test`` at ``valid.end + gap``, so every validation example is
strictly later than every training example, and every test example strictly later than every
validation one. An example's window is decided by its ``event_time`` alone; examples in a gap or
outside all windows belong to no split.

The gap is there for labels: a training impression just before ``train.end`` is labelled by clicks
up to one attribution window later. With ``gap >= attribution window`` no training label was
observed inside the validation window.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Iterable, Sequence

import pandas as pd

from eightbox.training.labels import utc

__all__ = ["SPLITS", "TemporalSplit", "Window", "assign", "by_fractions", "by_times", "split"]

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class Window:
    """Event times ``start <= t < end`` (UTC)."""

    start: pd.Timestamp
    end: pd.Timestamp

    def to_dict(self) -> dict[str, str]:
        return {"start": self.start.isoformat(), "end": self.end.isoformat()}


@dataclass(frozen=True)
class TemporalSplit:
    """Three consecutive windows, each strictly after the previous one (checked on construction)."""

    train: Window
    valid: Window
    test: Window

    def __post_init__(self) -> None:
        for name in SPLITS:
            w = getattr(self, name)
            if not w.start < w.end:
                raise ValueError(f"the {name} window is empty: start {w.start} is not before end {w.end}")
        if self.valid.start < self.train.end:
            raise ValueError(f"validation starts at {self.valid.start}, before training ends at {self.train.end}")
        if self.test.start < self.valid.end:
            raise ValueError(f"test starts at {self.test.start}, before validation ends at {self.valid.end}")

    def windows(self) -> dict[str, Window]:
        return {name: getattr(self, name) for name in SPLITS}

    def to_dict(self) -> dict[str, dict[str, str]]:
        """{split: {"start": iso, "end": iso}}: what a dataset manifest records."""
        return {name: w.to_dict() for name, w in self.windows().items()}


def _gap(gap: timedelta) -> pd.Timedelta:
    gap = pd.Timedelta(gap)
    if gap < pd.Timedelta(0):
        raise ValueError(f"gap must not be negative, got {gap}")
    return gap


def by_times(start: datetime, train_end: datetime, valid_end: datetime, test_end: datetime,
             gap: timedelta = timedelta(0)) -> TemporalSplit:
    """train ``[start, train_end)``, valid ``[train_end + gap, valid_end)``, test
    ``[valid_end + gap, test_end)``. Raises ValueError when the boundaries are not increasing or a
    gap leaves a window empty."""
    start, train_end, valid_end, test_end = map(utc, (start, train_end, valid_end, test_end))
    bounds = [start, train_end, valid_end, test_end]
    if bounds != sorted(bounds) or len(set(bounds)) < 4:
        raise ValueError("window boundaries must strictly increase: start < train_end < valid_end < test_end, "
                         f"got {[b.isoformat() for b in bounds]}")
    g = _gap(gap)
    return TemporalSplit(Window(start, train_end), Window(train_end + g, valid_end), Window(valid_end + g, test_end))


def by_fractions(times: Iterable, fractions: Sequence[float] = (0.8, 0.1, 0.1),
                 gap: timedelta = timedelta(0)) -> TemporalSplit:
    """Cut the time range of `times` (first to last event, inclusive) into consecutive windows
    holding `fractions` (train, valid, test; positive, summing to 1) of the *time span*, not of the
    rows; each gap is taken from the start of the window after it."""
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or any(f <= 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(f"fractions must be three positive numbers (train, valid, test) summing to 1, got {fractions}")
    t = pd.to_datetime(pd.Series(list(times) if not isinstance(times, pd.Series) else times), utc=True).dropna()
    if t.empty:
        raise ValueError("no event times to split")
    first, last = t.min(), t.max()
    if first == last:
        raise ValueError(f"every event is at {first}: a single instant cannot be split in time")
    span = last - first
    end = last + pd.Timedelta(1, "ns")  # the last event belongs to the test window
    train_end = first + span * fractions[0]
    valid_end = first + span * (fractions[0] + fractions[1])
    try:
        return by_times(first, train_end, valid_end, end, gap)
    except ValueError as e:
        raise ValueError(f"gap {gap} does not fit the time range {first} .. {last} with fractions "
                         f"{fractions}: {e}") from None


def assign(times: pd.Series, windows: TemporalSplit) -> pd.Series:
    """The split name of each event time ("train", "valid", "test"), or None in a gap or outside."""
    t = pd.to_datetime(times, utc=True)
    out = pd.Series([None] * len(t), index=t.index, dtype=object)
    for name, w in windows.windows().items():
        out[(t >= w.start) & (t < w.end)] = name
    return out


def split(examples: pd.DataFrame, windows: TemporalSplit, time_col: str = "event_time") -> dict[str, pd.DataFrame]:
    """{"train", "valid", "test": the rows of `examples` whose `time_col` falls in that window},
    each keeping the input's columns and row order (index reset). Rows in no window are dropped."""
    if time_col not in examples.columns:
        raise KeyError(f"examples have no {time_col!r} column to split on")
    which = assign(examples[time_col], windows)
    return {name: examples[which == name].reset_index(drop=True) for name in SPLITS}
