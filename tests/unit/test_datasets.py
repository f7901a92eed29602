"""Versioned datasets: the content hash, the version folder, idempotent writes, verified loads."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest

from eightbox.settings import Settings
from eightbox.training.datasets import DatasetIntegrityError, content_hash, load_dataset, write_dataset
from eightbox.training.splits import by_fractions, split

T0 = datetime(2024, 5, 1, tzinfo=timezone.utc)


def examples(n=60, seed=2) -> pd.DataFrame:
    """Rows shaped like the builders' output: ids, nullable columns, labels, float features."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "example_id": [f"x{i}" for i in range(n)],
        "request_id": [None if i % 7 == 0 else f"r{i // 3}" for i in range(n)],
        "user_id": [f"u{i % 5}" for i in range(n)], "item_id": [f"i{i % 9}" for i in range(n)],
        "position": pd.array([None if i % 7 == 0 else i % 3 for i in range(n)], dtype="Int64"),
        "event_time": pd.to_datetime([T0 + timedelta(minutes=int(m)) for m in rng.integers(0, 5000, n)], utc=True),
        "experiment_arm": ["control"] * n, "model_versions": ['{"ranker": "1"}'] * n,
        "click": rng.integers(0, 2, n).astype("int8"), "engaged": np.zeros(n, dtype="int8"),
        "value": np.zeros(n),
        "item_ctr_7d": np.where(np.arange(n) % 4 == 0, np.nan, rng.random(n)),
        "user_clicks_1d": rng.integers(0, 9, n).astype("float64"),
    })


def splits_of(df):
    return split(df, by_fractions(df["event_time"]))


def test_the_hash_is_stable_under_row_and_column_order_and_changes_with_one_value():
    df = examples()
    base = content_hash(splits_of(df))
    shuffled = df.sample(frac=1.0, random_state=1)[list(reversed(df.columns))]
    assert content_hash(splits_of(shuffled)) == base
    for column, value in [("item_ctr_7d", 0.123456), ("user_id", "u-other"), ("click", 1 - df.at[5, "click"]),
                          ("event_time", df.at[5, "event_time"] + timedelta(microseconds=1)), ("position", pd.NA)]:
        changed = df.copy()
        changed.at[5, column] = value
        assert content_hash(splits_of(changed)) != base, column


def test_the_hash_tells_a_missing_value_from_zero_and_a_row_moved_between_splits():
    df = examples()
    parts = splits_of(df)
    nan_row = parts["train"]["item_ctr_7d"].isna().idxmax()
    zeroed = {k: v.copy() for k, v in parts.items()}
    zeroed["train"].loc[nan_row, "item_ctr_7d"] = 0.0
    assert content_hash(zeroed) != content_hash(parts)
    moved = {**parts, "train": parts["train"].iloc[:-1], "valid": pd.concat([parts["train"].iloc[-1:], parts["valid"]])}
    assert content_hash(moved) != content_hash(parts)


def test_a_dataset_is_written_under_data_dir_by_version_and_loads_verified(tmp_path):
    settings = Settings(env="test", home=tmp_path)
    df = examples()
    windows = by_fractions(df["event_time"])
    parts = split(df, windows)
    path = write_dataset(parts, "ranker-clicks", settings=settings, windows=windows, feature_service="ranker_v1",
                         label_delay=timedelta(hours=2), attribution_window=timedelta(hours=1), source="unit test")
    manifest = json.loads((path / "manifest.json").read_text())
    assert path == settings.data_dir / "datasets" / "ranker-clicks" / manifest["version"]
    assert manifest["content_hash"].startswith(manifest["version"]) and len(manifest["version"]) == 12
    assert manifest["rows"] == {s: len(parts[s]) for s in ("train", "valid", "test")}
    assert manifest["feature_columns"] == ["item_ctr_7d", "user_clicks_1d"]
    assert (manifest["label_delay_s"], manifest["attribution_window_s"]) == (7200.0, 3600.0)
    assert manifest["windows"] == windows.to_dict() and manifest["source"] == "unit test"

    loaded = load_dataset(path)
    for s in ("train", "valid", "test"):
        pd.testing.assert_frame_equal(loaded.splits[s], parts[s])
    assert loaded.feature_columns == ["item_ctr_7d", "user_clicks_1d"]


def test_writing_the_same_rows_twice_is_a_no_op_and_other_rows_get_another_version(tmp_path):
    df = examples()
    first = write_dataset(splits_of(df), "d", root=tmp_path)
    before = {p.name: p.stat().st_mtime_ns for p in first.iterdir()}
    again = write_dataset(splits_of(df.sample(frac=1.0, random_state=3)), "d", root=tmp_path)
    assert again == first and {p.name: p.stat().st_mtime_ns for p in first.iterdir()} == before
    other = write_dataset(splits_of(examples(seed=9)), "d", root=tmp_path)
    assert other != first and other.parent == first.parent
    assert sorted(p.name for p in first.parent.iterdir()) == sorted([first.name, other.name])  # no temp left


def test_the_same_rows_described_differently_are_refused_not_overwritten(tmp_path):
    df = examples()
    write_dataset(splits_of(df), "d", root=tmp_path, source="a")
    with pytest.raises(ValueError, match=r"another manifest \(differs in \['source'\]\)"):
        write_dataset(splits_of(df), "d", root=tmp_path, source="b")


def test_a_changed_file_fails_verification_on_load(tmp_path):
    path = write_dataset(splits_of(examples()), "d", root=tmp_path)
    test = pd.read_parquet(path / "test.parquet")
    test.loc[0, "item_ctr_7d"] = 42.0
    test.to_parquet(path / "test.parquet", index=False)
    with pytest.raises(DatasetIntegrityError, match="the data changed after it was written"):
        load_dataset(path)


def test_bad_inputs_are_refused_with_the_reason(tmp_path):
    parts = splits_of(examples())
    with pytest.raises(ValueError, match="splits must be exactly"):
        write_dataset({"train": parts["train"]}, "d", root=tmp_path)
    with pytest.raises(ValueError, match="dataset name"):
        write_dataset(parts, "../escape", root=tmp_path)
    with pytest.raises(ValueError, match="give a settings"):
        write_dataset(parts, "d")
    with pytest.raises(ValueError, match="not in the data"):
        write_dataset(parts, "d", root=tmp_path, feature_columns=["nope"])
