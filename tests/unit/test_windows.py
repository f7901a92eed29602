"""Properties of the reference window semantics (specs.window_ends / specs.window_counts), which
the Spark backfill and the Flink job must both reproduce."""

from __future__ import annotations

import random
from collections import Counter
from datetime import datetime, timedelta, timezone

from hypothesis import given, settings, strategies as st

from eightbox.features import derived
from eightbox.features.specs import DAILY, EPOCH, STREAMING, WindowedCount, smoothed_ctr, window_counts, window_ends

US = timedelta(microseconds=1)
T0 = datetime(2024, 3, 10, tzinfo=timezone.utc)
SLIDES = (timedelta(seconds=1), timedelta(minutes=1), timedelta(minutes=5), timedelta(hours=1), timedelta(days=1))


@st.composite
def specs(draw) -> WindowedCount:
    """A spec of the project, or a made-up one with an arbitrary slide and size."""
    if draw(st.booleans()):
        return draw(st.sampled_from((*STREAMING, *DAILY)))
    slide = draw(st.sampled_from(SLIDES))
    n = draw(st.integers(1, 40))
    events = tuple(draw(st.sets(st.sampled_from(("item_clicked", "item_engaged", "impression_served")), min_size=1)))
    keys = draw(st.sampled_from((("user_id",), ("item_id",), ("user_id", "category"))))
    return WindowedCount("f", keys, events, n * slide, slide, "t")


def _instant(offset_us: int, snap: int) -> datetime:
    """T0 + offset, sometimes snapped onto a whole minute / hour / day (a window boundary)."""
    unit = (None, 60_000_000, 3_600_000_000, 86_400_000_000)[snap]
    if unit:
        offset_us -= offset_us % unit
    return T0 + offset_us * US


events = st.builds(
    lambda off, snap, et, u, i, c: {"event_type": et, "event_time": _instant(off, snap), "user_id": u,
                                    "item_id": i, "category": c, "creator_id": i and f"k{i}"},
    st.integers(-40 * 86_400_000_000, 40 * 86_400_000_000), st.integers(0, 3),
    st.sampled_from(("item_clicked", "item_engaged", "impression_served", "user_signed_up")),
    st.sampled_from(("u1", "u2", "u3", None)), st.sampled_from(("i1", "i2", None)), st.sampled_from(("c1", "c2", None)))
streams = st.lists(events, max_size=60)


def _counted(spec: WindowedCount, rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["event_type"] in spec.events and all(r[k] is not None for k in spec.keys)]


@settings(max_examples=200, deadline=None)
@given(spec=specs(), rows=streams)
def test_each_event_lands_in_exactly_size_over_slide_windows(spec, rows):
    n = spec.size // spec.slide
    for row in rows:
        ends = window_ends(row["event_time"], spec.size, spec.slide)
        assert len(ends) == len(set(ends)) == n
    assert sum(window_counts(spec, rows).values()) == n * len(_counted(spec, rows))


@settings(max_examples=200, deadline=None)
@given(spec=specs(), rows=streams)
def test_window_ends_are_aligned_and_contain_the_event(spec, rows):
    for row in rows:
        ts = row["event_time"]
        ends = window_ends(ts, spec.size, spec.slide)
        assert ends == sorted(ends)
        for end in ends:
            assert (end - EPOCH) % spec.slide == timedelta(0)
            assert end - spec.size <= ts < end
        # complete: the window just before the first, and just after the last, miss ts
        assert not (ends[0] - spec.slide - spec.size <= ts < ends[0] - spec.slide)
        assert not (ends[-1] + spec.slide - spec.size <= ts < ends[-1] + spec.slide)


@settings(max_examples=200, deadline=None)
@given(spec=specs(), rows=streams, seed=st.integers(0, 2**32 - 1))
def test_counts_do_not_depend_on_arrival_order(spec, rows, seed):
    shuffled = list(rows)
    random.Random(seed).shuffle(shuffled)
    assert window_counts(spec, shuffled) == window_counts(spec, rows)


@settings(max_examples=200, deadline=None)
@given(spec=specs(), rows=streams)
def test_every_count_is_the_events_in_its_window(spec, rows):
    counted = _counted(spec, rows)
    got = window_counts(spec, rows)
    for (*key, end), count in got.items():
        assert count == sum(1 for r in counted if tuple(r[k] for k in spec.keys) == tuple(key)
                            and end - spec.size <= r["event_time"] < end)
    assert Counter({k: v for k, v in got.items() if v}) == Counter(got)  # windows exist only with events


def test_derived_reference_formulas():
    assert smoothed_ctr(0, 0) == 0.05
    assert derived.trending(0, 0) == 1.0
    assert derived.trending(7, 7) > derived.trending(1, 7)
    assert 0 < derived.affinity(0, 0) < derived.affinity(5, 10) < 1
