"""The funnel's contract with in-memory sources, readers and ranker: stage counts add up, the union
dedupes, filters and re-ranking rules hold in the final list, and every failure picks the right rung
of the degradation ladder without raising. Breakers run on a fake clock; nothing here sleeps long."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest

from eightbox.serving.breaker import BreakerPolicy, Breakers
from eightbox.serving.candidates import Candidate
from eightbox.serving.funnel import Funnel
from eightbox.serving.stages import FunnelConfig, StageBudget
from eightbox.serving.models import ModelSet
from eightbox.serving.rerank import RerankConfig
from eightbox.serving.sources import PopularityBoard, Skipped, TrendingSource
from eightbox.training.covisitation import ItemCatalog

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
ITEMS = [f"i{n:02d}" for n in range(60)]  # creator c<n % 6>, category k<n % 4>; i59 is the newest
FEATURES = ("quality", "item_impressions_7d")


def catalog(items=ITEMS) -> ItemCatalog:
    frame = pd.DataFrame({"item_id": items, "creator_id": [f"c{int(i[1:]) % 6}" for i in items],
                          "category": [f"k{int(i[1:]) % 4}" for i in items],
                          "published_at": [T0 + timedelta(minutes=int(i[1:])) for i in items],
                          "popularity": [float(100 - int(i[1:])) for i in items]})
    return ItemCatalog(frame, static_items=items[:20])


class FakeSource:
    def __init__(self, name, items, *, exc=None, delay=0.0, breaker=None):
        self.name, self.items, self.exc, self.delay, self.breaker = name, items, exc, delay, breaker
        self.calls = 0

    async def __call__(self, ctx):
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.exc:
            raise self.exc
        return [Candidate(i, self.name, retrieval_score=float(-r), sources=[self.name])
                for r, i in enumerate(self.items)]


class FakeHistory:
    def __init__(self, recent=(), exc=None):
        self.recent, self.exc = list(recent), exc

    def read_rows(self, rows):
        if self.exc:
            raise self.exc
        return {"user_id": rows["user_id"], "last_engaged_items": [self.recent]}


class FakeFeatures:
    """quality = item number / 60; no impressions for items with an odd number (uncertain)."""

    def __init__(self, exc=None):
        self.exc, self.calls = exc, 0

    def read(self, user_id, item_ids, categories=None, creators=None):
        self.calls += 1
        if self.exc:
            raise self.exc
        return {"user_id": [user_id] * len(item_ids), "item_id": list(item_ids),
                "quality": [int(i[1:]) / 60 for i in item_ids],
                "item_impressions_7d": [None if int(i[1:]) % 2 else 500 for i in item_ids]}


class FakeRanker:
    version = "rk1"

    def __init__(self, exc=None):
        self.exc, self.seen, self.calls = exc, [], 0

    def predict(self, df):
        self.calls += 1
        if self.exc:
            raise self.exc
        self.seen.append(df.copy())
        q = df["quality"].to_numpy()
        return pd.DataFrame({"p_click": 0.1 + 0.5 * q, "p_engaged": 0.05 * q}, index=df.index)


def models(**changes) -> ModelSet:
    fields = dict(name="test", versions={"bundle": "test@0", "encoder": "e1", "ranker": "rk1"}, features=FEATURES,
                  feature_service="svc", ranker=FakeRanker(), catalog=catalog())
    return ModelSet(**{**fields, **changes})


def sources(**overrides):
    made = {"two_tower": FakeSource("two_tower", ITEMS[:30]), "covisit": FakeSource("covisit", ITEMS[20:40]),
            "trending": FakeSource("trending", ITEMS[35:50] + ["gone"]), "fresh": FakeSource("fresh", ITEMS[50:])}
    made.update(overrides)
    return list(made.values())


CONFIG = FunnelConfig(rerank=RerankConfig(creator_cap=2, explore_share=0.2, explore_after=2),
                      stages={s: StageBudget(5, 50) for s in ("history", "sources", "features", "rank", "rerank")},
                      total_timeout_ms=150)


DEFAULT = object()


def funnel(m=DEFAULT, srcs=None, *, history=None, features=None, board=None, breakers=None, config=CONFIG, **kw):
    feats = features if features is not None else FakeFeatures()
    return Funnel(models() if m is DEFAULT else m, srcs if srcs is not None else sources(),
                  feature_readers=lambda service: feats, history_reader=history or FakeHistory(["i03", "i21"]),
                  board=board, config=config, breakers=breakers, **kw)


def recommend(f, k=10, user="u1", request_id="r1"):
    return asyncio.run(f.recommend(user, k, request_id=request_id))


def ids(rec):
    return [c.item_id for c in rec.items]


# --- the full funnel ----------------------------------------------------------------------------------

def test_stage_counts_add_up_and_each_stage_feeds_the_next():
    rec = recommend(funnel(unavailable=frozenset({"i05"})), k=10)
    assert rec.rung == "full" and len(rec.items) == 10
    for s in rec.stages:
        assert s.n_in == s.n_out + s.n_filtered + s.n_deduped, s
        assert s.status == "ok", s
    by = {s.name: s for s in rec.stages}
    produced = sum(by[f"source:{n}"].n_out for n in ("two_tower", "covisit", "trending", "fresh"))
    assert by["merge"].n_in == produced == 30 + 20 + 16 + 10
    assert by["merge"].n_deduped == 10 + 5  # i20..i29 twice, i35..i39 twice
    assert by["filter"].n_in == by["merge"].n_out and by["filter"].n_filtered == 2 + 1 + 1  # engaged, i05, "gone"
    assert by["features"].n_in == by["rank"].n_in == by["filter"].n_out == by["rerank"].n_in
    assert by["rerank"].n_out == len(rec.items)
    assert rec.model_versions["ranker"] == "rk1" and rec.feature_names == FEATURES


def test_the_union_keeps_every_source_and_the_first_in_priority_order():
    rec = recommend(funnel(config=FunnelConfig(rerank=RerankConfig(k=60, creator_cap=None, explore_share=0))), k=60)
    found = {c.item_id: c for c in rec.items}
    assert len(found) == len(rec.items), "no item twice"
    assert found["i25"].source == "two_tower" and found["i25"].sources == ["two_tower", "covisit"]
    assert found["i37"].sources == ["covisit", "trending"] and found["i10"].sources == ["two_tower"]


def test_engaged_unavailable_and_unknown_items_never_reach_the_list():
    f = funnel(history=FakeHistory(["i59", "i58", "i01"]), unavailable=frozenset({"i57", "i56"}))
    shown = set(ids(recommend(f, k=50)))
    assert shown and not shown & {"i59", "i58", "i01", "i57", "i56", "gone"}


def test_creator_cap_and_exploration_share_hold_in_the_final_list():
    for request in range(20):
        rec = recommend(funnel(), k=10, request_id=f"r{request}")
        creators = Counter(c.creator_id for c in rec.items)
        assert max(creators.values()) <= 2
        explored = [c for c in rec.items if c.explored]
        assert len(explored) == 2 and all(c.new_or_uncertain for c in explored)  # floor(10 · 0.2)
        assert not any(c.explored for c in rec.items[:2])  # explore_after


def test_shown_items_carry_the_exact_vector_the_ranker_scored_and_calibrated_scores():
    ranker = FakeRanker()
    rec = recommend(funnel(models(ranker=ranker)))
    scored = ranker.seen[0].set_index(ranker.seen[0].index)
    for c in rec.items:
        assert set(c.features) == set(FEATURES) and c.p_click is not None and c.score is not None
        row = [r for r in scored.to_dict("records") if r["quality"] == c.features["quality"]][0]
        assert np.array_equal(np.array([row[f] for f in FEATURES]), np.array([c.features[f] for f in FEATURES]),
                              equal_nan=True)
        assert c.score == pytest.approx(c.p_click + 2 * c.p_engaged)


# --- the ladder -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("case, stage, status", [
    ("ranker raises", "rank", "error"),
    ("no ranker", "rank", "skipped"),
    ("redis raises", "features", "error"),
    ("redis hangs", "features", "timeout"),
])
def test_without_a_ranking_the_fallback_rung_orders_by_the_sources(case, stage, status):
    m = models(ranker=None if case == "no ranker" else FakeRanker(RuntimeError("boom") if "ranker" in case else None))

    class Hanging(FakeFeatures):
        def read(self, *a, **kw):
            import time
            time.sleep(0.3)
            return super().read(*a, **kw)

    feats = {"redis raises": FakeFeatures(ConnectionError("refused")), "redis hangs": Hanging()}.get(case)
    rec = recommend(funnel(m, features=feats))
    assert rec.rung == "fallback" and rec.stage(stage).status == status
    assert len(rec.items) == 10 and all(c.p_click is None and c.score is None and not c.features for c in rec.items)
    assert ids(rec)[:2] == ["i00", "i30"]  # best of two_tower, then best of covisit not found by two_tower
    assert rec.latency_ms < 150


def test_a_missing_primary_source_serves_ranked_items_as_fallback():
    rec = recommend(funnel(srcs=sources(two_tower=FakeSource("two_tower", [], exc=Skipped("no ANN index")))))
    assert rec.rung == "fallback" and rec.stage("source:two_tower").status == "skipped"
    assert rec.stage("rank").status == "ok" and all(c.p_click is not None for c in rec.items)


@pytest.mark.parametrize("failure", ["raise", "time out", "empty"])
def test_with_no_candidates_the_popularity_list_answers(failure):
    def broken(name):
        return FakeSource(name, [] if failure == "empty" else ITEMS,
                          exc=RuntimeError("x") if failure == "raise" else None,
                          delay=0.2 if failure == "time out" else 0.0)

    f = funnel(srcs=[broken(n) for n in ("two_tower", "covisit", "trending", "fresh")])
    rec = recommend(f)
    assert rec.rung == "popularity" and len(rec.items) == 10
    assert ids(rec)[0] == "i00" and "i03" not in ids(rec)  # training popularity order, engaged item dropped
    assert max(Counter(c.creator_id for c in rec.items).values()) <= 2
    expected = {"raise": "error", "time out": "timeout", "empty": "ok"}[failure]
    assert {s.status for s in rec.stages if s.name.startswith("source:")} == {expected}
    assert rec.latency_ms < 150


class BoardReader:
    """The board's sparse read of the 15-minute clicks, over a fake's ``read_rows``; counts reads."""

    reads: Counter

    def read_nonzero(self, join_key, values, feature):
        self.reads = getattr(self, "reads", Counter()) + Counter([feature])
        return {i: v for i, v in enumerate(self.read_rows({join_key: list(values)})[feature]) if v}


def test_the_board_snapshot_orders_the_popularity_rung():
    class Reader(BoardReader):
        def read_rows(self, rows):
            n = len(rows["item_id"])
            return {"item_clicks_15m": [None] * n, "item_trending": [None] * n,
                    "item_popularity_7d": [float(int(i[1:])) for i in rows["item_id"]]}

    m = models()
    board = PopularityBoard(Reader(), lambda: m)
    board.refresh()
    rec = recommend(funnel(m, srcs=[], board=board))
    assert rec.rung == "popularity" and ids(rec)[0] == "i59" and rec.stage("popularity").source == "board"


def test_trending_is_by_recent_clicks_and_a_failed_background_refresh_keeps_the_last_snapshot():
    class Reader(BoardReader):
        fail = False

        def read_rows(self, rows):
            if self.fail:
                raise ConnectionError("refused")
            clicks = {"i07": 5, "i03": 5, "i09": 2}
            return {"item_clicks_15m": [clicks.get(i) for i in rows["item_id"]],
                    "item_trending": [9.0 if i == "i03" else None for i in rows["item_id"]],
                    "item_popularity_7d": [None] * len(rows["item_id"])}

    reader, m = Reader(), models()
    board = PopularityBoard(reader, lambda: m, interval_s=0.01, chunk=7)
    board.refresh()
    assert [i for i, _ in board.snapshot.trending] == ["i03", "i07", "i09"]  # tie at 5 clicks: the daily trend
    assert board.popular(m)[:3] == ("i00", "i01", "i02")  # no 7-day counts: training popularity

    async def background():
        reader.fail = True
        board.start()
        await asyncio.sleep(0.05)
        await board.stop()

    before = board.snapshot
    asyncio.run(background())
    assert board.snapshot is before and "refused" in board.last_error
    rec = recommend(funnel(m, srcs=[TrendingSource(board, 2)]))  # top 2 from the snapshot: i03 (engaged), i07
    assert ids(rec) == ["i07"] and rec.stage("source:trending").n_out == 2


def test_trending_keeps_only_the_best_few_ties_by_item_id_and_follows_a_new_catalog():
    class Reader(BoardReader):
        def read_rows(self, rows):  # clicks: i20 5, i10-i12 3 each; a daily trend for every item
            clicks = {"i20": 5, "i12": 3, "i11": 3, "i10": 3}
            return {"item_clicks_15m": [clicks.get(i) for i in rows["item_id"]],
                    "item_trending": [1.0] * len(rows["item_id"]), "item_popularity_7d": [None] * len(rows["item_id"])}

    m = models()
    board = PopularityBoard(Reader(), lambda: m, chunk=7, keep=3)
    assert [i for i, _ in board.refresh().trending] == ["i20", "i10", "i11"]  # of 60 live items, the best 3
    m = models(catalog=catalog(ITEMS[11:30]))  # a reload: the board reads the new catalog's items
    snapshot = board.refresh()
    assert [i for i, _ in snapshot.trending] == ["i20", "i11", "i12"] and snapshot.n_items == 19  # i10 is gone
    assert snapshot.popular[:2] == ("i11", "i12")  # no 7-day counts: the new catalog's training popularity


def test_the_board_reads_clicks_every_refresh_and_the_daily_counters_once_per_interval():
    class Reader(BoardReader):
        clicks: dict = {}
        trend: dict = {"i05": 2.0}

        def read_rows(self, rows):
            ids = rows["item_id"]
            return {"item_clicks_15m": [self.clicks.get(i) for i in ids],
                    "item_trending": [self.trend.get(i) for i in ids],
                    "item_popularity_7d": [7.0 if i == "i40" else None for i in ids]}

    now, m, reader = [0.0], models(), Reader()
    board = PopularityBoard(reader, lambda: m, chunk=100, keep=2, daily_s=300.0, clock=lambda: now[0])
    assert board.refresh().trending[0][0] == "i05" and board.popular(m)[0] == "i40"
    reader.clicks, reader.trend = {"i30": 4}, {"i05": 2.0, "i06": 9.0}
    now[0] = 299.0
    snapshot = board.refresh()
    assert [i for i, _ in snapshot.trending] == ["i30", "i05"]  # new clicks at once; i06's new trend not yet
    now[0] = 300.0
    assert [i for i, _ in board.refresh().trending] == ["i30", "i06"]  # the daily counters read again
    assert reader.reads["item_clicks_15m"] == 3


def test_static_list_when_nothing_else_answers_or_the_funnel_itself_breaks():
    no_catalog = models(catalog=None)
    rec = recommend(funnel(no_catalog, srcs=[], config=FunnelConfig(static_items=("s1", "s2", "s1"))))
    assert rec.rung == "static" and ids(rec) == ["s1", "s2"]

    class Broken(FakeSource):  # returns something that is not a candidate list: a bug, not a dependency
        async def __call__(self, ctx):
            return [None]

    rec = recommend(funnel(srcs=[Broken("two_tower", [])]))
    assert rec.rung == "static" and rec.stage("funnel").status == "error"
    assert len(rec.items) == 10 and max(Counter(c.creator_id for c in rec.items).values()) <= 2
    assert recommend(funnel(None, srcs=[])).rung == "static"


def test_an_unreadable_history_still_serves_the_full_funnel_and_says_what_was_not_filtered():
    rec = recommend(funnel(history=FakeHistory(exc=ConnectionError("refused"))))
    assert rec.rung == "full" and rec.stage("history").status == "error"
    assert "history unknown" in rec.stage("filter").detail


def test_k_is_capped_and_zero_is_an_empty_answer():
    f = funnel(config=FunnelConfig(k_max=5))
    assert len(recommend(f, k=1000).items) == 5
    assert recommend(f, k=0).items == ()


# --- breakers -------------------------------------------------------------------------------------------

class Clock:
    now = 0.0

    def __call__(self):
        return self.now


def test_a_failing_ranker_opens_its_breaker_then_is_probed_and_closes_when_it_recovers():
    clock = Clock()
    breakers = Breakers(default=BreakerPolicy(window_calls=10, min_calls=3, error_rate=0.5, open_seconds=5.0),
                        clock=clock)
    ranker = FakeRanker(RuntimeError("model server down"))
    f = funnel(models(ranker=ranker), breakers=breakers)
    statuses = [recommend(f).stage("rank").status for _ in range(5)]
    assert statuses == ["error"] * 3 + ["breaker_open"] * 2
    assert ranker.calls == 3, "an open breaker does not call the ranker"
    assert breakers.states()["ranker"] == "open"

    ranker.exc = None
    clock.now += 5.0  # half-open: one trial, which succeeds and closes the breaker
    rec = recommend(f)
    assert rec.rung == "full" and breakers.states()["ranker"] == "closed"


def test_repeated_redis_failures_open_the_redis_breaker_and_stop_calling_it():
    breakers = Breakers(default=BreakerPolicy(window_calls=10, min_calls=4, error_rate=0.5), clock=Clock())
    feats = FakeFeatures(ConnectionError("refused"))
    f = funnel(features=feats, history=FakeHistory(exc=ConnectionError("refused")), breakers=breakers)
    recs = [recommend(f) for _ in range(4)]
    assert all(r.rung == "fallback" for r in recs)
    assert recs[-1].stage("history").status == "breaker_open" and recs[-1].stage("features").status == "breaker_open"
    assert feats.calls == 2  # history + features count toward one breaker: it opened after 2 requests


def test_a_reload_swaps_the_whole_model_set_between_requests():
    f = funnel()
    first = recommend(f)
    f.models = models(versions={"bundle": "test@1", "encoder": "e2", "ranker": "rk2"})
    assert first.model_versions["bundle"] == "test@0" and recommend(f).model_versions["bundle"] == "test@1"


# --- experiment arms --------------------------------------------------------------------------------------

def test_a_failing_challenger_ranker_opens_its_own_breaker_and_the_champions_stays_closed():
    breakers = Breakers(default=BreakerPolicy(window_calls=10, min_calls=3, error_rate=0.5), clock=Clock())
    broken = models(ranker=FakeRanker(RuntimeError("bad export")), versions={"bundle": "new@1", "ranker": "rk9"})
    f = funnel(breakers=breakers)

    async def go():
        return [await f.recommend("u1", 10, models=broken, arm="challenger") for _ in range(4)]

    challenger = asyncio.run(go())
    assert [r.stage("rank").status for r in challenger] == ["error"] * 3 + ["breaker_open"]
    assert all(r.model_versions["bundle"] == "new@1" and r.rung == "fallback" for r in challenger)
    assert breakers.states()["ranker@challenger"] == "open" and "ranker" not in breakers.states()
    champion = recommend(f)  # self.models, arm champion: the plain breaker names
    assert champion.rung == "full" and breakers.states()["ranker"] == "closed"


def test_recommend_each_reads_the_history_once_and_answers_per_arms_models():
    calls = []

    class CountingHistory(FakeHistory):
        def read_rows(self, rows):
            calls.append(rows["user_id"])
            return super().read_rows(rows)

    other = models(versions={"bundle": "other@2", "ranker": "rk2"})
    f = funnel(history=CountingHistory(["i03", "i21"]))
    recs = asyncio.run(f.recommend_each({"champion": f.models, "challenger": other}, "u1", 10, request_id="r7"))
    assert calls == [["u1"]], "one history read for both arms"
    assert [recs[arm].model_versions["bundle"] for arm in ("champion", "challenger")] == ["test@0", "other@2"]
    for rec in recs.values():
        assert rec.rung == "full" and rec.request_id == "r7" and len(rec.items) == 10
        assert [s.name for s in rec.stages].count("history") == 1
        assert not {"i03", "i21"} & {c.item_id for c in rec.items}, "the shared history still filters"
