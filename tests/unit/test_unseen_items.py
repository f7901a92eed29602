"""A published item without daily features yet reads as counted at zero (features/unseen_items.py):
the values, which rows get them, and the age both training and serving take from publication."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest

from eightbox.features import specs
from eightbox.features.derived import trending
from eightbox.features.unseen_items import age_days, epoch_ns, fill_unseen_items, unseen_item_values
from eightbox.training.covisitation import ItemCatalog
from eightbox.training.interactions import items_from_events

from .test_funnel import T0 as FUNNEL_T0, FakeRanker, funnel, models

T0 = datetime(2024, 3, 1, tzinfo=timezone.utc)
NS_PER_DAY = 86_400e9


def test_zero_counts_give_the_derived_columns_that_zero_counts_give_in_the_batch():
    values = unseen_item_values()
    assert {s.name for s in specs.DAILY if s.table == "item_daily"} <= set(values)
    assert set(values) | {"item_age_days"} == set(specs.table_features("item_daily"))
    assert values["item_impressions_7d"] == values["item_clicks_1d"] == values["item_popularity_7d"] == 0.0
    assert values["item_ctr_7d"] == values["item_ctr_1d"] == specs.smoothed_ctr(0, 0)
    assert values["item_trending"] == trending(0, 0) == 1.0  # the batch's formula (Spark is tested against it): no trend


def test_only_rows_with_no_item_daily_values_and_a_known_publication_are_filled():
    frame = pd.DataFrame({
        "user_clicks_7d": [3.0, np.nan, np.nan, np.nan],
        "item_impressions_7d": [40.0, np.nan, np.nan, np.nan],
        "item_ctr_7d": [0.1, np.nan, np.nan, np.nan],
        "item_age_days": [5.0, np.nan, np.nan, np.nan],
    })
    ages = np.array([9.0, 0.25, np.nan, 1.5])
    frame.loc[3, "item_ctr_7d"] = 0.3  # one item_daily value present: a real row, left alone
    fill_unseen_items(frame, ages)
    assert frame.loc[0].tolist() == [3.0, 40.0, 0.1, 5.0]  # counted: untouched
    assert frame.loc[1, "item_impressions_7d"] == 0.0 and frame.loc[1, "item_ctr_7d"] == specs.smoothed_ctr(0, 0)
    assert frame.loc[1, "item_age_days"] == 0.25 and np.isnan(frame.loc[1, "user_clicks_7d"])  # users untouched
    assert frame.loc[2].isna().all()  # not published (or unknown): nothing is known
    assert np.isnan(frame.loc[3, "item_impressions_7d"]) and frame.loc[3, "item_ctr_7d"] == 0.3


def test_age_counts_from_publication_and_is_missing_before_it_or_for_an_unknown_item():
    published = epoch_ns(pd.Series([T0, T0, pd.NaT, T0 + timedelta(days=1)]))
    at = epoch_ns(pd.Series([T0 + timedelta(hours=6)] * 4))
    ages = age_days(published, at)
    assert ages[0] == ages[1] == pytest.approx(0.25)
    assert np.isnan(ages[2]) and np.isnan(ages[3])
    assert age_days(published[:1], at[0] + NS_PER_DAY)[0] == pytest.approx(1.25)  # one request time for all


def test_the_catalog_ages_an_item_from_its_first_publication_not_its_latest_version():
    events = pd.DataFrame({"event_type": "item_published", "item_id": ["a", "a", "b"],
                           "category": ["x", "y", "x"], "creator_id": ["c", "c", "c"],
                           "content_vector": [None, None, None],
                           "event_time": [T0, T0 + timedelta(days=3), T0 + timedelta(days=1)]})
    catalog = ItemCatalog.build(items_from_events(events))
    assert catalog.info("a") == ("c", "y")  # the latest version's attributes
    first = catalog.published_ns(["a", "b", "unknown"])
    assert first[0] == epoch_ns(pd.Series([T0]))[0] and first[1] == first[0] + NS_PER_DAY and np.isnan(first[2])


def test_a_ranker_v2_model_scores_never_counted_items_as_zero_counts_aged_from_publication():
    """FakeFeatures gives odd items no item_impressions_7d: for ranker_v2 they are published items
    not yet counted, so they are scored (and logged) with 0 impressions and their age at the request."""
    at = FUNNEL_T0 + timedelta(days=2)
    ranker = FakeRanker()
    feats = ("quality", "item_impressions_7d", "item_age_days")
    f = funnel(models(ranker=ranker, features=feats, feature_service="ranker_v2"))
    rec = asyncio.run(f.recommend("u1", 10, context={"request_time": at}, request_id="r1"))
    seen = ranker.seen[0]
    assert seen["item_impressions_7d"].notna().all() and seen["item_age_days"].notna().any()
    for c in rec.items:
        number = int(c.item_id[1:])
        if number % 2:  # never counted: zero, and aged from its publication at FUNNEL_T0 + number minutes
            assert c.features["item_impressions_7d"] == 0.0
            assert c.features["item_age_days"] == pytest.approx(2 - number / 1440)
        else:  # counted: what the store said, and (FakeFeatures has none) no age made up
            assert c.features["item_impressions_7d"] == 500 and np.isnan(c.features["item_age_days"])
    # A ranker_v1 model keeps the NaNs it was trained on.
    ranker_v1 = FakeRanker()
    asyncio.run(funnel(models(ranker=ranker_v1, features=feats, feature_service="ranker_v1"))
                .recommend("u1", 10, context={"request_time": at}, request_id="r2"))
    assert ranker_v1.seen[0]["item_impressions_7d"].isna().any()
