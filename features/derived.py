"""Columns computed from the windowed counts (specs.DERIVED), as pure Python (the reference) and as
Spark expressions that must agree with it.

Contracts (all evaluated per entity row at its `event_timestamp`; missing counts are 0):
- uc_affinity_30d = (uc_engagements_30d + 1) / (user_engagements_30d + N_CATEGORIES_PRIOR): the
  smoothed share of the user's 30-day engagements that fell in this category (~1/12 when unseen).
- item_ctr_1d / item_ctr_7d / creator_ctr_7d = specs.smoothed_ctr(clicks, impressions).
- item_popularity_7d = item_engagements_7d.
- item_trending = (item_clicks_1d + 1) / (item_clicks_7d / 7 + 1): yesterday's clicks against the
  7-day daily average, both shrunk by one click; > 1 means rising.
- item_age_days = days from the item's first ItemPublished event_time to event_timestamp (float);
  null when the item has no ItemPublished event before event_timestamp.
- creator_items = distinct items the creator published strictly before event_timestamp.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from eightbox.features.specs import (CTR_PRIOR_CLICKS, CTR_PRIOR_IMPRESSIONS, TIMESTAMP, TRENDING_PRIOR_CLICKS,
                                    trending)  # noqa: F401 (trending: the pure reference, re-exported)

AFFINITY_PRIOR_ENGAGEMENTS, AFFINITY_PRIOR_TOTAL = 1.0, 12.0  # ~ one share of 12 categories
DAY_US = 86_400 * 1_000_000

# What each derived column reads: count features, or raw lake columns as "<event_type>.<column>".
DERIVED_INPUTS: dict[str, tuple[str, ...]] = {
    "uc_affinity_30d": ("uc_engagements_30d", "user_engagements_30d"),
    "item_ctr_1d": ("item_clicks_1d", "item_impressions_1d"),
    "item_ctr_7d": ("item_clicks_7d", "item_impressions_7d"),
    "item_popularity_7d": ("item_engagements_7d",),
    "item_trending": ("item_clicks_1d", "item_clicks_7d"),
    "item_age_days": ("item_published.item_id", "item_published.event_time"),
    "creator_ctr_7d": ("creator_clicks_7d", "creator_impressions_7d"),
    "creator_items": ("item_published.item_id", "item_published.creator_id", "item_published.event_time"),
}


# --- the pure reference (item_trending's, specs.trending, is in specs: serving reads it too) ------
def affinity(uc_engagements: float, user_engagements: float) -> float:
    return (uc_engagements + AFFINITY_PRIOR_ENGAGEMENTS) / (user_engagements + AFFINITY_PRIOR_TOTAL)


# --- Spark -----------------------------------------------------------------------------------
def _ctr(clicks: str, impressions: str) -> Column:
    return (F.col(clicks) + F.lit(CTR_PRIOR_CLICKS)) / (F.col(impressions) + F.lit(CTR_PRIOR_IMPRESSIONS))


def _us(column: str) -> Column:
    return F.unix_micros(F.col(column))


def user_category_derived(uc: DataFrame, user: DataFrame) -> DataFrame:
    """`uc` (user_category_daily counts) plus uc_affinity_30d, reading the user's 30-day total
    from `user` (user_daily counts) at the same event_timestamp."""
    totals = user.select("user_id", TIMESTAMP, F.col("user_engagements_30d").alias("_total"))
    out = uc.join(totals, ["user_id", TIMESTAMP], "left").fillna(0, ["_total"])
    aff = (F.col("uc_engagements_30d") + F.lit(AFFINITY_PRIOR_ENGAGEMENTS)) / (
        F.col("_total") + F.lit(AFFINITY_PRIOR_TOTAL))
    return out.withColumn("uc_affinity_30d", aff).drop("_total")


def item_derived(item: DataFrame, items: DataFrame) -> DataFrame:
    """`item` (item_daily counts) plus its derived columns; `items` is the item dimension
    (item_id, published_at, ...) from ItemPublished events."""
    published = items.select("item_id", "published_at")
    out = item.join(published, "item_id", "left")
    age = F.when(F.col("published_at") < F.col(TIMESTAMP),
                 (_us(TIMESTAMP) - _us("published_at")) / F.lit(float(DAY_US)))
    trend = (F.col("item_clicks_1d") + F.lit(TRENDING_PRIOR_CLICKS)) / (
        F.col("item_clicks_7d") / F.lit(7.0) + F.lit(TRENDING_PRIOR_CLICKS))
    return (out.withColumn("item_ctr_1d", _ctr("item_clicks_1d", "item_impressions_1d"))
               .withColumn("item_ctr_7d", _ctr("item_clicks_7d", "item_impressions_7d"))
               .withColumn("item_popularity_7d", F.col("item_engagements_7d"))
               .withColumn("item_trending", trend)
               .withColumn("item_age_days", age)
               .drop("published_at"))


def creator_derived(creator: DataFrame, items: DataFrame) -> DataFrame:
    """`creator` (creator_daily counts) plus creator_ctr_7d and creator_items (items published by
    the creator strictly before the row's event_timestamp)."""
    pubs = items.select(F.col("creator_id").alias("_creator"), "item_id", "published_at")
    rows = creator.select("creator_id", TIMESTAMP).distinct()
    joined = rows.join(pubs, (rows.creator_id == pubs._creator) & (pubs.published_at < rows[TIMESTAMP]), "left")
    made = joined.groupBy("creator_id", TIMESTAMP).agg(F.countDistinct("item_id").alias("creator_items"))
    return (creator.withColumn("creator_ctr_7d", _ctr("creator_clicks_7d", "creator_impressions_7d"))
                   .join(made, ["creator_id", TIMESTAMP], "left")
                   .fillna(0, ["creator_items"]))


def add_derived(tables: dict[str, DataFrame], items: DataFrame) -> dict[str, DataFrame]:
    """Every table of `tables` (counts only) with its specs.DERIVED columns appended."""
    out = dict(tables)
    if "user_category_daily" in out:
        out["user_category_daily"] = user_category_derived(tables["user_category_daily"], tables["user_daily"])
    if "item_daily" in out:
        out["item_daily"] = item_derived(tables["item_daily"], items)
    if "creator_daily" in out:
        out["creator_daily"] = creator_derived(tables["creator_daily"], items)
    return out
