"""The real-data path: MovieLens 100K (GroupLens) as Eightbox events.

* ``download_movielens_100k(dest)`` fetches the official zip on a user's machine (the data set is
  never committed to the repository; see its README for the terms of use and citation).
* ``load_movielens_100k(path)`` reads the ``u.*`` files into pandas DataFrames.
* ``movielens_events(ml)`` turns them into schema events, time-ordered, with deterministic ids.
* ``temporal_split(ratings)`` is a temporal leave-last-out split for offline evaluation.

Ids are prefixed so they never collide with other sources: user ``196`` -> ``"u196"``,
movie ``242`` -> ``"i242"``. The users' zip codes are personal data the platform does not need:
they are dropped when the files are read and never reach a DataFrame or an event.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

import pandas as pd

from eightbox.ingest.schema import ItemEngaged, ItemPublished, UserSignedUp

ML100K_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
FOLDER_NAME = "movielens-100k"
REQUIRED_FILES = ("u.data", "u.item", "u.user", "u.genre", "u.occupation")
CREATOR_ID = "ml-unknown"  # MovieLens has no creators
EVENT_ID_PREFIX = "ml100k"
_ONE_SECOND = timedelta(seconds=1)


@dataclass(frozen=True)
class MovieLens:
    """MovieLens 100K as three DataFrames.

    ratings: user_id (str, "u1"), item_id (str, "i1"), rating (float), event_time (datetime64 UTC),
             in the original u.data row order (index 0..n-1).
    users:   user_id, age (int), gender, occupation (no zip code).
    items:   item_id, title, release_date (datetime64 UTC, NaT where unknown), genres (list[str]).
    """

    ratings: pd.DataFrame
    users: pd.DataFrame
    items: pd.DataFrame


def shared_movielens_path() -> Path | None:
    """The read-only shared copy next to the repository (``<repo>/../shared/data/movielens-100k``),
    or None when there is none."""
    path = Path(__file__).resolve().parents[1].parent / "shared" / "data" / FOLDER_NAME
    return path if all((path / f).is_file() for f in REQUIRED_FILES) else None


def _print_progress(done: int, total: int | None) -> None:
    if total:
        sys.stderr.write(f"\rdownloading MovieLens 100K: {100 * done // total:3d}%")
    else:
        sys.stderr.write(f"\rdownloading MovieLens 100K: {done // 1024} KiB")
    sys.stderr.flush()


def download_movielens_100k(
    dest: Path | str,
    progress: Callable[[int, int | None], None] | None = _print_progress,
    url: str = ML100K_URL,
) -> Path:
    """Download and extract MovieLens 100K into ``dest/movielens-100k``; return that folder.

    Idempotent: if the folder already holds the ``u.*`` files nothing is fetched. The zip is
    written to a temporary file, the files are extracted to a temporary folder, and that folder is
    renamed into place, so an interrupted run never leaves a half-written data set behind.
    ``progress(bytes_done, total_bytes_or_None)`` is called as the download proceeds (None: quiet).
    """
    dest = Path(dest)
    target = dest / FOLDER_NAME
    if all((target / f).is_file() for f in REQUIRED_FILES):
        return target
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".ml100k-") as tmp:
        zip_path = Path(tmp) / "ml-100k.zip.part"
        with urllib.request.urlopen(url, timeout=60) as resp, open(zip_path, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            done = 0
            while chunk := resp.read(1 << 16):
                out.write(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
        if progress is _print_progress:
            sys.stderr.write("\n")
        extracted = Path(tmp) / FOLDER_NAME
        extracted.mkdir()
        with zipfile.ZipFile(zip_path) as zf:
            for info in zf.infolist():
                name = Path(info.filename).name  # flatten: no path from the archive is trusted
                if info.is_dir() or not (name.startswith("u.") or name == "README"):
                    continue
                with zf.open(info) as src, open(extracted / name, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        missing = [f for f in REQUIRED_FILES if not (extracted / f).is_file()]
        if missing:
            raise RuntimeError(f"{url} did not contain {missing}")
        if target.exists():  # a partial folder from elsewhere: replace it
            shutil.rmtree(target)
        extracted.rename(target)
    return target


def load_movielens_100k(path: Path | str | None = None) -> MovieLens:
    """Read the ``u.*`` files of MovieLens 100K from ``path`` (default: the shared copy)."""
    if path is None:
        path = shared_movielens_path()
        if path is None:
            raise FileNotFoundError(
                "no MovieLens 100K copy found; call download_movielens_100k(dest) and pass its result"
            )
    path = Path(path)

    raw = pd.read_csv(
        path / "u.data", sep="\t", header=None, names=["user", "item", "rating", "ts"],
        dtype={"user": "int64", "item": "int64", "rating": "float64", "ts": "int64"},
    )
    ratings = pd.DataFrame({
        "user_id": "u" + raw["user"].astype(str),
        "item_id": "i" + raw["item"].astype(str),
        "rating": raw["rating"].astype(float),
        "event_time": pd.to_datetime(raw["ts"], unit="s", utc=True),
    })

    # u.user: user_id|age|gender|occupation|zip_code. The zip code is never read.
    users = pd.read_csv(
        path / "u.user", sep="|", header=None, usecols=[0, 1, 2, 3],
        names=["user", "age", "gender", "occupation"], dtype={"user": "int64", "age": "int64"},
    )
    users.insert(0, "user_id", "u" + users.pop("user").astype(str))

    genre_names = [
        line.split("|")[0]
        for line in (path / "u.genre").read_text(encoding="latin-1").splitlines()
        if line.strip()
    ]
    # u.item: id|title|release date|video release date|IMDb URL|<one 0/1 flag per genre>
    item_raw = pd.read_csv(
        path / "u.item", sep="|", header=None, encoding="latin-1",
        names=["item", "title", "release", "video_release", "url", *genre_names],
        dtype={"item": "int64", "title": str, "release": str},
        keep_default_na=False,
    )
    flags = item_raw[genre_names].to_numpy(dtype=bool)
    items = pd.DataFrame({
        "item_id": "i" + item_raw["item"].astype(str),
        "title": item_raw["title"].astype(str),
        "release_date": pd.to_datetime(item_raw["release"], format="%d-%b-%Y", errors="coerce", utc=True),
        "genres": [[g for g, on in zip(genre_names, row) if on] for row in flags],
    })
    return MovieLens(ratings=ratings, users=users, items=items)


def _utc(ts: pd.Timestamp) -> datetime:
    return ts.to_pydatetime().astimezone(timezone.utc)


def movielens_events(ml: MovieLens) -> list[ItemEngaged | UserSignedUp | ItemPublished]:
    """All of MovieLens as schema events, in non-decreasing ``event_time`` order.

    * ``UserSignedUp`` per user who rated, one second before their first rating (age, gender,
      occupation as string attributes; no zip code);
    * ``ItemPublished`` per rated movie, one second before its first rating (category: first
      genre, tags: all genres, creator ``"ml-unknown"``); movies never rated are skipped;
    * ``ItemEngaged(kind="rate", value=rating)`` per rating.

    Event ids are deterministic: ``ml100k-u-<user_id>``, ``ml100k-i-<item_id>``,
    ``ml100k-r-<rating row index>``. At equal times, signups come before publications, which come
    before ratings; ratings at equal times keep their u.data order.
    """
    r = ml.ratings
    first_by_user = r.groupby("user_id")["event_time"].min()
    first_by_item = r.groupby("item_id")["event_time"].min()
    keyed: list[tuple[datetime, int, int, object]] = []

    users = ml.users.set_index("user_id")
    for n, (uid, first) in enumerate(first_by_user.items()):
        attrs = {}
        if uid in users.index:
            row = users.loc[uid]
            attrs = {"age": str(int(row["age"])), "gender": str(row["gender"]),
                     "occupation": str(row["occupation"])}
        t = _utc(first) - _ONE_SECOND
        keyed.append((t, 0, n, UserSignedUp(
            event_id=f"{EVENT_ID_PREFIX}-u-{uid}", event_time=t, user_id=uid, attributes=attrs)))

    items = ml.items.set_index("item_id")
    for n, (iid, first) in enumerate(first_by_item.items()):
        title, genres = "", []
        if iid in items.index:
            title, genres = str(items.at[iid, "title"]), list(items.at[iid, "genres"])
        t = _utc(first) - _ONE_SECOND
        keyed.append((t, 1, n, ItemPublished(
            event_id=f"{EVENT_ID_PREFIX}-i-{iid}", event_time=t, item_id=iid, creator_id=CREATOR_ID,
            category=genres[0] if genres else "unknown", tags=genres, title=title[:1024])))

    times = [_utc(t) for t in r["event_time"]]
    for idx, uid, iid, value, t in zip(r.index, r["user_id"], r["item_id"], r["rating"], times):
        keyed.append((t, 2, int(idx), ItemEngaged(
            event_id=f"{EVENT_ID_PREFIX}-r-{idx}", event_time=t, user_id=uid, item_id=iid,
            kind="rate", value=float(value))))

    keyed.sort(key=lambda k: k[:3])
    return [e for *_, e in keyed]  # type: ignore[misc]


def temporal_split(ratings: pd.DataFrame, time_col: str = "event_time",
                   user_col: str = "user_id") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Temporal leave-last-out split: ``(train, test)``.

    For each user, the latest rating (by ``time_col``; ties broken by row order, the later row
    counting as later) goes to ``test`` and all their other ratings to ``train``, so every test
    rating is at or after all of that user's train ratings. Users with a single rating keep it in
    ``train`` (nothing would be left to learn from). Both frames keep the original index and are
    sorted by time. Note that this is per-user, not a global time cut: another user's train
    ratings may be later than this user's test rating.
    """
    ordered = ratings.sort_values(time_col, kind="stable")
    counts = ordered.groupby(user_col)[user_col].transform("size")
    last = ~ordered.duplicated(user_col, keep="last") & (counts > 1)
    return ordered[~last], ordered[last]
