"""Training-time components for serving's non-model sources: the item catalog and co-visitation."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest

from eightbox.training.covisitation import Covisitation, ItemCatalog

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)


def interactions(rows) -> pd.DataFrame:
    """rows: (user, item, seconds after T0)."""
    return pd.DataFrame([(u, i, T0 + timedelta(seconds=s), "click", 1.0) for u, i, s in rows],
                        columns=["user_id", "item_id", "event_time", "kind", "weight"])


INTER = interactions([("u1", "a", 0), ("u1", "b", 1), ("u1", "c", 2), ("u2", "a", 0), ("u2", "b", 5),
                      ("u2", "b", 6), ("u3", "c", 0), ("u3", "d", 7200)])


def test_pairs_count_users_once_and_are_normalised_by_each_items_users():
    cov = Covisitation.fit(INTER, window=timedelta(hours=1))
    # a: {u1, u2}, b: {u1, u2}, c: {u1, u3}; u2's repeated b counts once; c-d is two hours apart.
    assert cov.neighbors_of("a") == [("b", 1.0), ("c", 0.5)]
    assert cov.neighbors_of("c") == [("a", 0.5), ("b", 0.5)]
    assert cov.neighbors_of("d") == [] and cov.neighbors_of("unknown") == []


def test_related_sums_neighbours_of_recent_items_with_recency_decay_and_never_returns_a_seed():
    cov = Covisitation.fit(INTER, window=timedelta(hours=1))
    assert cov.related(["a", "c"], 5, decay=0.8) == [("b", pytest.approx(1.0 + 0.8 * 0.5))]
    assert cov.related([], 5) == []


def test_lookback_and_top_n_bound_the_neighbours():
    far = interactions([("u1", "a", 0), ("u1", "x", 1), ("u1", "y", 2), ("u1", "b", 3)])
    assert "b" not in dict(Covisitation.fit(far, lookback=2).neighbors_of("a"))
    assert len(Covisitation.fit(far, lookback=3, top_n=2).neighbors_of("a")) == 2


def test_components_round_trip_and_refuse_a_changed_file(tmp_path):
    cov = Covisitation.fit(INTER)
    loaded = Covisitation.load(cov.save(tmp_path / "cov"))
    assert all(loaded.neighbors_of(i) == cov.neighbors_of(i) for i in "abcd")
    items = pd.DataFrame({"item_id": list("abcd"), "creator_id": ["x", "x", "y", "z"], "category": ["k"] * 4,
                          "published_at": [T0 + timedelta(hours=h) for h in (3, 1, 2, 2)]})
    catalog = ItemCatalog.build(items, INTER, static_n=2)
    again = ItemCatalog.load(catalog.save(tmp_path / "catalog"))
    assert again.newest(4) == ("a", "c", "d", "b") and again.popular() == ("b", "a", "c", "d")
    assert again.static_items == ("b", "a") and again.info("a") == ("x", "k") and "e" not in again
    (tmp_path / "cov" / Covisitation.ARRAYS_FILE).write_bytes(b"changed")
    with pytest.raises(ValueError, match="hash"):
        Covisitation.load(tmp_path / "cov")


def test_an_empty_history_gives_an_empty_table():
    cov = Covisitation.fit(INTER.iloc[:0])
    assert len(cov) == 0 and cov.related(["a"], 3) == []
