"""MovieLens 100K loader, events and split, against the shared read-only copy of the data set."""

from __future__ import annotations

import zipfile
from datetime import timezone

import pandas as pd
import pytest

from eightbox.ingest import schema
from eightbox.ingest.movielens import (
    MovieLens,
    download_movielens_100k,
    load_movielens_100k,
    movielens_events,
    shared_movielens_path,
    temporal_split,
)

DATA = shared_movielens_path()
NO_DATA = (
    "no shared MovieLens 100K copy at <repo>/../shared/data/movielens-100k "
    "(download_movielens_100k(dest) fetches one; it needs the network)"
)


@pytest.fixture(scope="module")
def ml() -> MovieLens:
    if DATA is None:
        pytest.skip(NO_DATA)
    return load_movielens_100k(DATA)


@pytest.fixture(scope="module")
def events(ml):
    return movielens_events(ml)


def test_load_counts_and_types(ml):
    assert len(ml.ratings) == 100_000
    assert len(ml.users) == 943
    assert len(ml.items) == 1682
    assert ml.ratings["user_id"].nunique() == 943
    assert ml.ratings["item_id"].str.fullmatch(r"i\d+").all()
    assert ml.ratings["user_id"].str.fullmatch(r"u\d+").all()
    assert ml.ratings["rating"].dtype == float
    assert ml.ratings["rating"].between(1, 5).all()
    assert str(ml.ratings["event_time"].dt.tz) == "UTC"
    # the first row of u.data: 196	242	3	881250949
    first = ml.ratings.iloc[0]
    assert (first.user_id, first.item_id, first.rating) == ("u196", "i242", 3.0)
    assert first.event_time == pd.Timestamp(881250949, unit="s", tz="UTC")


def test_users_and_items(ml):
    assert list(ml.users.columns) == ["user_id", "age", "gender", "occupation"]
    u1 = ml.users.set_index("user_id").loc["u1"]
    assert (u1.age, u1.gender, u1.occupation) == (24, "M", "technician")
    items = ml.items.set_index("item_id")
    assert items.at["i1", "title"] == "Toy Story (1995)"
    assert items.at["i1", "genres"] == ["Animation", "Children's", "Comedy"]
    assert items.at["i1", "release_date"] == pd.Timestamp("1995-01-01", tz="UTC")
    assert pd.isna(items.at["i267", "release_date"])  # the "unknown" movie
    assert all(len(g) >= 1 for g in ml.items["genres"])
    # u.item is latin-1: accented titles decode
    assert ml.items["title"].str.contains("é").any()


def test_event_counts(ml, events):
    rated_items = ml.ratings["item_id"].nunique()
    assert len(events) == 943 + rated_items + 100_000
    kinds = pd.Series([e.event_type for e in events]).value_counts()
    assert kinds["user_signed_up"] == 943
    assert kinds["item_published"] == rated_items
    assert kinds["item_engaged"] == 100_000


def test_events_time_ordered_and_utc(events):
    times = [e.event_time for e in events]
    assert all(a <= b for a, b in zip(times, times[1:]))
    assert all(t.utcoffset() == timezone.utc.utcoffset(None) for t in times[:1000])


def test_signup_and_publish_precede_engagements(events):
    signed_up: dict[str, object] = {}
    published: dict[str, object] = {}
    for e in events:
        if isinstance(e, schema.UserSignedUp):
            signed_up[e.user_id] = e.event_time
        elif isinstance(e, schema.ItemPublished):
            published[e.item_id] = e.event_time
        else:
            assert e.user_id in signed_up and signed_up[e.user_id] < e.event_time
            assert e.item_id in published and published[e.item_id] < e.event_time


def test_ids_unique_and_deterministic(ml, events):
    ids = [e.event_id for e in events]
    assert len(set(ids)) == len(ids)
    again = movielens_events(ml)
    assert [e.event_id for e in again] == ids


def test_event_contents(events):
    by_id = {e.event_id: e for e in events}
    r0 = by_id["ml100k-r-0"]
    assert isinstance(r0, schema.ItemEngaged)
    assert (r0.user_id, r0.item_id, r0.kind, r0.value) == ("u196", "i242", "rate", 3.0)
    u1 = by_id["ml100k-u-u1"]
    assert u1.attributes == {"age": "24", "gender": "M", "occupation": "technician"}
    i1 = by_id["ml100k-i-i1"]
    assert (i1.category, i1.creator_id, i1.title) == ("Animation", "ml-unknown", "Toy Story (1995)")
    assert i1.tags == ["Animation", "Children's", "Comedy"]


def test_every_event_round_trips(events):
    for e in events:
        wire = schema.to_wire(e)
        assert schema.parse_event(wire) == e


def test_no_zip_code_anywhere(ml, events):
    zips = set(pd.read_csv(DATA / "u.user", sep="|", header=None, dtype=str)[4])
    assert not any("zip" in c.lower() for c in ml.users.columns)
    for e in events:
        if isinstance(e, schema.UserSignedUp):
            assert set(e.attributes) == {"age", "gender", "occupation"}
            assert not zips & set(e.attributes.values())
    assert all(b"zip" not in schema.to_wire(e).lower() for e in events if e.event_type == "user_signed_up")


def test_temporal_split(ml):
    train, test = temporal_split(ml.ratings)
    assert len(train) + len(test) == 100_000
    assert len(test) == 943 and test["user_id"].is_unique
    assert not set(train.index) & set(test.index)
    last_train = train.groupby("user_id")["event_time"].max()
    test_time = test.set_index("user_id")["event_time"]
    assert (test_time >= last_train.reindex(test_time.index)).all()


def test_temporal_split_ties_and_single_rating():
    t = pd.Timestamp("2020-01-01", tz="UTC")
    df = pd.DataFrame({
        "user_id": ["a", "a", "a", "b"],
        "item_id": ["x", "y", "z", "x"],
        "rating": [1.0, 2.0, 3.0, 4.0],
        "event_time": [t, t + pd.Timedelta(1, "s"), t + pd.Timedelta(1, "s"), t],
    })
    train, test = temporal_split(df)
    assert list(test.index) == [2]  # the later row of the tie; "b" has one rating: kept in train
    assert sorted(train.index) == [0, 1, 3]


def test_download_extracts_and_is_idempotent(tmp_path):
    """Offline: a tiny synthetic archive in the layout of ml-100k.zip, served from a file:// URL."""
    files = {
        "u.data": "1\t1\t5\t881250949\n2\t1\t3\t881250950\n",
        "u.item": "1|Café (1995)|01-Jan-1995||http://x|0|1\n",
        "u.user": "1|24|M|technician|85711\n2|53|F|other|94043\n",
        "u.genre": "unknown|0\nAction|1\n\n",
        "u.occupation": "technician\nother\n",
    }
    archive = tmp_path / "ml-100k.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name, text in files.items():
            zf.writestr(f"ml-100k/{name}", text.encode("latin-1"))
        zf.writestr("ml-100k/u1.base", "ignored")
        zf.writestr("../evil/u.x", "must not escape")
    seen = []
    out = download_movielens_100k(tmp_path / "data", progress=lambda d, t: seen.append((d, t)),
                                  url=archive.as_uri())
    assert out == tmp_path / "data" / "movielens-100k"
    assert sorted(p.name for p in out.iterdir()) == sorted([*files, "u.x"])
    assert not (tmp_path / "evil").exists()
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["movielens-100k"]  # no temp left
    assert seen and seen[-1][0] == archive.stat().st_size
    small = load_movielens_100k(out)
    assert len(small.ratings) == 2 and small.items.at[0, "title"] == "Café (1995)"
    assert small.items.at[0, "genres"] == ["Action"]
    assert len(movielens_events(small)) == 2 + 1 + 2
    # idempotent: a second call does not fetch (the URL no longer exists)
    archive.unlink()
    assert download_movielens_100k(tmp_path / "data", progress=None, url=archive.as_uri()) == out
