"""Labels of served impressions: attribution, the attribution window, the label-delay cutoff, and
logged features taken from the impression itself. Pure pandas."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest

from eightbox.ingest import lake
from eightbox.training.labels import BASE_COLUMNS, attach_labels

T0 = datetime(2024, 5, 1, 12, tzinfo=timezone.utc)
WINDOW, DELAY = timedelta(hours=1), timedelta(hours=2)
AS_OF = T0 + timedelta(days=1)


def imp(eid, at, user="u1", item="i1", request="r1", position=0, features=None, **extra):
    return {"event_id": eid, "event_time": at, "request_id": request, "user_id": user, "item_id": item,
            "position": position, "surface": "home", "model_versions": {"ranker": "3"},
            "experiment_arm": "control", "features": features or {}, **extra}


def ev(eid, at, user="u1", item="i1", request="r1", value=None):
    row = {"event_id": eid, "event_time": at, "user_id": user, "item_id": item, "request_id": request}
    if value is not None:
        row["value"] = value
    return row


def frame(rows):
    return pd.DataFrame(rows, columns=["event_id", "event_time", "user_id", "item_id", "request_id", "value"]
                        if not rows else None)


def label(impressions, clicks=(), engagements=(), as_of=AS_OF, delay=DELAY, window=WINDOW):
    out = attach_labels(pd.DataFrame(impressions), frame(list(clicks)), frame(list(engagements)), window, as_of, delay)
    return out.set_index("example_id")


def test_a_click_labels_the_impression_of_its_request_and_item_only():
    got = label([imp("a", T0, item="i1"), imp("b", T0, item="i2", position=1),
                 imp("c", T0 - timedelta(hours=5), item="i1", request="r0")],
                clicks=[ev("k", T0 + timedelta(minutes=5), item="i1")])
    assert got["click"].to_dict() == {"a": 1, "b": 0, "c": 0}
    assert list(got.columns[: len(BASE_COLUMNS) - 1]) == list(BASE_COLUMNS[1:])


def test_a_click_without_request_id_labels_only_the_latest_impression_of_that_user_and_item():
    got = label([imp("early", T0, request="r1"), imp("late", T0 + timedelta(minutes=10), request="r2"),
                 imp("other-user", T0 + timedelta(minutes=10), user="u2", request="r3")],
                clicks=[ev("k", T0 + timedelta(minutes=20), request=None)])
    assert got["click"].to_dict() == {"early": 0, "late": 1, "other-user": 0}


def test_clicks_outside_the_attribution_window_do_not_label_and_its_end_is_inclusive():
    imps = [imp("before", T0, request="r1"), imp("edge", T0, request="r2"), imp("after", T0, request="r3")]
    clicks = [ev("k1", T0 - timedelta(seconds=1), request="r1"),  # before the impression was shown
              ev("k2", T0 + WINDOW, request="r2"),  # exactly at the window's end: counts
              ev("k3", T0 + WINDOW + timedelta(microseconds=1), request="r3")]
    assert label(imps, clicks)["click"].to_dict() == {"before": 0, "edge": 1, "after": 0}


def test_the_label_delay_cutoff_drops_impressions_whose_labels_are_not_final():
    cut = AS_OF - DELAY
    got = label([imp("final", cut, request="r1"), imp("pending", cut + timedelta(seconds=1), request="r2")],
                clicks=[ev("k", cut + timedelta(seconds=2), request="r2")])  # it was even clicked already
    assert list(got.index) == ["final"]
    assert got.loc["final", "click"] == 0


def test_a_click_at_as_of_counts_and_anything_later_never_does():
    # label_delay == window: the last kept impression's window closes exactly at as_of.
    shown = AS_OF - WINDOW
    imps = [imp("a", shown, request="r1"), imp("b", shown - timedelta(minutes=1), request="r2")]
    clicks = [ev("k1", AS_OF, request="r1"), ev("k2", AS_OF + timedelta(microseconds=1), request="r2")]
    got = label(imps, clicks, delay=WINDOW)
    assert got["click"].to_dict() == {"a": 1, "b": 0}


def test_events_after_as_of_change_nothing_so_a_later_lake_rebuilds_the_same_rows():
    rng = np.random.default_rng(3)
    imps, clicks, engs = [], [], []
    for n in range(200):
        at = T0 + timedelta(minutes=int(rng.integers(0, 2 * 24 * 60)))
        user, item = f"u{rng.integers(3)}", f"i{rng.integers(4)}"
        imps.append(imp(f"m{n}", at, user, item, request=f"r{n}"))
        if rng.random() < 0.5:
            delay = timedelta(minutes=int(rng.integers(0, 90)))
            request = None if rng.random() < 0.3 else f"r{n}"
            clicks.append(ev(f"c{n}", at + delay, user, item, request))
            engs.append(ev(f"e{n}", at + 2 * delay, user, item, request, value=float(rng.integers(1, 5))))
    full = label(imps, clicks, engs)
    known = label([r for r in imps if r["event_time"] <= AS_OF], [r for r in clicks if r["event_time"] <= AS_OF],
                  [r for r in engs if r["event_time"] <= AS_OF])
    pd.testing.assert_frame_equal(full, known)
    assert 0 < full["click"].sum() < len(full) and full["event_time"].max() <= AS_OF - DELAY


def test_engagements_label_engaged_and_sum_their_values():
    got = label([imp("a", T0, request="r1"), imp("b", T0, item="i2", request="r1")],
                engagements=[ev("e1", T0 + timedelta(minutes=30), value=4.0),
                             ev("e2", T0 + timedelta(minutes=40), value=1.5),
                             ev("e3", T0 + 2 * WINDOW, item="i2", value=5.0)])  # too late
    assert got["engaged"].to_dict() == {"a": 1, "b": 0}
    assert got["value"].to_dict() == {"a": 5.5, "b": 0.0}
    assert got["click"].to_dict() == {"a": 0, "b": 0}


def test_logged_features_come_only_from_the_impression_itself():
    got = label([imp("first", T0, request="r1", features={"item_ctr_7d": 0.1}),
                 imp("second", T0 + timedelta(hours=3), request="r2",
                     features={"item_ctr_7d": 1e9, "user_clicks_1d": 5.0})])
    assert got.loc["first", "item_ctr_7d"] == 0.1
    assert np.isnan(got.loc["first", "user_clicks_1d"])  # not filled from the later impression
    assert (got.loc["second", "item_ctr_7d"], got.loc["second", "user_clicks_1d"]) == (1e9, 5.0)
    assert list(got.columns[len(BASE_COLUMNS) - 1:]) == ["item_ctr_7d", "user_clicks_1d"]


def test_lake_tables_with_map_columns_and_duplicate_events_are_labelled_once():
    def wire(row):
        return {**row, "event_time": row["event_time"].isoformat(), "_partition": 0, "_offset": 0}

    impression = imp("a", T0, features={"item_ctr_7d": 0.25})
    imps = lake.to_table("impression_served", [wire(impression), wire(impression)])
    clicks = lake.to_table("item_clicked", [wire(ev("k", T0 + timedelta(minutes=1)))] * 2)
    engs = lake.to_table("item_engaged", [wire({**ev("e", T0 + timedelta(minutes=2), value=3.0), "kind": "like"})])
    got = attach_labels(imps, clicks, engs, WINDOW, AS_OF, DELAY)
    assert len(got) == 1
    row = got.iloc[0]
    assert (row["click"], row["engaged"], row["value"], row["item_ctr_7d"]) == (1, 1, 3.0, 0.25)
    assert row["model_versions"] == '{"ranker": "3"}' and row["position"] == 0


def test_a_label_delay_shorter_than_the_attribution_window_is_refused():
    with pytest.raises(ValueError, match="label_delay .* must be at least the attribution window"):
        label([imp("a", T0)], delay=WINDOW - timedelta(seconds=1))
    with pytest.raises(ValueError, match="attribution_window must be positive"):
        label([imp("a", T0)], window=timedelta(0))


def test_no_impressions_give_an_empty_frame_with_the_base_columns():
    empty = pd.DataFrame(columns=["event_id", "event_time", "request_id", "user_id", "item_id", "position", "features"])
    got = attach_labels(empty, frame([]), frame([]), WINDOW, AS_OF, DELAY)
    assert got.empty and list(got.columns) == list(BASE_COLUMNS)
