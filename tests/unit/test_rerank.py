from __future__ import annotations

import copy
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eightbox.serving.candidates import Candidate
from eightbox.serving.rerank import RerankConfig, rerank, rerank_with_stats


def cand(item_id, score, creator=None, category=None, new=False, embedding=None):
    return Candidate(item_id=item_id, source="test", score=score, creator_id=creator,
                     category=category, new_or_uncertain=new, embedding=embedding)


def ids(result):
    return [c.item_id for c in result]


candidate_st = st.builds(
    cand,
    item_id=st.sampled_from([f"i{n}" for n in range(30)]),  # small space: duplicates happen
    score=st.one_of(st.none(), st.floats(-5, 5)),
    creator=st.one_of(st.none(), st.sampled_from(["a", "b", "c", "d"])),
    category=st.one_of(st.none(), st.sampled_from(["x", "y", "z"])),
    new=st.booleans(),
    embedding=st.one_of(st.none(), st.lists(st.floats(-1, 1), min_size=3, max_size=3)),
)
config_st = st.builds(
    RerankConfig,
    k=st.integers(0, 15),
    mmr_lambda=st.floats(0, 1),
    creator_cap=st.one_of(st.none(), st.integers(1, 3)),
    explore_share=st.floats(0, 0.5),
    explore_after=st.integers(0, 3),
    seed=st.integers(0, 5),
)


@settings(max_examples=300, deadline=None)
@given(candidates=st.lists(candidate_st, max_size=40), config=config_st, key=st.text(max_size=8))
def test_creator_cap_and_list_contract_hold_for_any_candidate_set(candidates, config, key):
    result, stats = rerank_with_stats(candidates, config, key)
    if config.creator_cap is not None:
        per_creator = Counter(c.creator_id for c in result if c.creator_id is not None)
        assert all(n <= config.creator_cap for n in per_creator.values())
    assert len(result) <= config.k
    assert len(set(ids(result))) == len(result)  # never a duplicate item_id
    explored_at = [p for p, c in enumerate(result) if c.explored]
    assert len(explored_at) == stats.n_explored <= stats.explore_slots == config.explore_slots()
    assert all(p >= config.explore_after for p in explored_at)
    assert all(c.new_or_uncertain for c in result if c.explored)
    assert stats.n_out == len(result) and stats.n_in == len(candidates)


def test_no_item_id_is_returned_twice_when_sources_repeat_it():
    candidates = [cand("a", 3.0), cand("a", 9.0), cand("b", 2.0), cand("b", 1.0), cand("c", 0.0)]
    result, stats = rerank_with_stats(candidates, RerankConfig(k=5, explore_share=0), "r")
    assert ids(result) == ["a", "b", "c"]
    assert result[0].score == 3.0  # the first occurrence is kept
    assert stats.n_duplicates == 2


@pytest.mark.parametrize(
    ("k", "share", "after", "slots"),
    [
        (10, 0.1, 2, 1),
        (20, 0.1, 2, 2),
        (10, 0.25, 2, 2),  # floor(2.5)
        (10, 0.05, 2, 1),  # floor gives 0: raised to 1 because share > 0
        (10, 0.0, 2, 0),  # 0 disables
        (2, 0.5, 2, 0),  # every position is protected
        (3, 0.9, 2, 1),  # never more than the k - explore_after unprotected positions
    ],
)
def test_explore_slots_floor_k_times_share_with_at_least_one(k, share, after, slots):
    assert RerankConfig(k=k, explore_share=share, explore_after=after).explore_slots() == slots


def test_exactly_the_reserved_slots_are_explored_when_enough_items_are_eligible():
    established = [cand(f"s{n}", 10.0 - n * 0.1, creator=f"c{n}") for n in range(30)]
    cold = [cand(f"n{n}", -1.0, creator=f"cold{n}", new=True) for n in range(10)]
    config = RerankConfig(k=20, explore_share=0.1, mmr_lambda=1.0)
    result, stats = rerank_with_stats(established + cold, config, "req-1")
    assert len(result) == 20
    assert sum(c.explored for c in result) == stats.n_explored == 2
    assert all(c.item_id.startswith("n") for c in result if c.explored)


def test_unused_exploration_slots_go_back_to_mmr():
    established = [cand(f"s{n}", 10.0 - n * 0.1) for n in range(30)]
    config = RerankConfig(k=10, explore_share=0.3, mmr_lambda=1.0)  # 3 slots, 1 eligible item
    result, stats = rerank_with_stats(established + [cand("new", -1.0, new=True)], config, "r")
    assert len(result) == 10
    assert stats.explore_slots == 3 and stats.n_explored == 1
    assert [c.item_id for c in result if not c.explored] == [f"s{n}" for n in range(9)]


def test_a_new_item_the_score_already_shows_is_not_marked_explored():
    candidates = [cand("hot-new", 9.0, new=True)] + [cand(f"s{n}", 5.0 - n) for n in range(5)]
    result = rerank(candidates, RerankConfig(k=3, explore_share=0.3, mmr_lambda=1.0), "r")
    assert result[0].item_id == "hot-new" and not result[0].explored
    assert not any(c.explored for c in result)  # no other eligible item: slot went back to MMR


def test_explored_items_skip_the_protected_top_and_spread_over_the_rest():
    established = [cand(f"s{n}", 10.0 - n * 0.1) for n in range(20)]
    cold = [cand(f"n{n}", -1.0, new=True) for n in range(5)]
    config = RerankConfig(k=10, explore_share=0.2, explore_after=2, mmr_lambda=1.0)
    result = rerank(established + cold, config, "r")
    assert [p for p, c in enumerate(result) if c.explored] == [4, 8]  # 2 + floor((i + .5) * 8 / 2)


def test_lambda_one_gives_pure_score_order():
    candidates = [cand(f"i{n}", score=s) for n, s in enumerate([0.3, 2.0, -1.0, 0.9, 0.9, 5.0])]
    result = rerank(candidates, RerankConfig(k=6, mmr_lambda=1.0, explore_share=0), "r")
    assert ids(result) == ["i5", "i1", "i3", "i4", "i0", "i2"]  # ties keep input order


def test_lambda_one_skips_items_over_the_creator_cap_and_keeps_score_order():
    scores = {"a1": 9, "a2": 8, "a3": 7, "b1": 6, "a4": 5, "b2": 4, "c1": 3}
    candidates = [cand(i, s, creator=i[0]) for i, s in scores.items()]
    config = RerankConfig(k=5, mmr_lambda=1.0, creator_cap=2, explore_share=0)
    result, stats = rerank_with_stats(candidates, config, "r")
    assert ids(result) == ["a1", "a2", "b1", "b2", "c1"]
    assert stats.n_capped == 2  # a3 and a4 never placed


def test_lower_lambda_increases_category_diversity():
    candidates = [cand(f"x{n}", 10.0 - n * 0.1, category="x") for n in range(6)]
    candidates += [cand(f"y{n}", 8.0 - n * 0.1, category="y") for n in range(3)]
    candidates += [cand(f"z{n}", 7.0 - n * 0.1, category="z") for n in range(3)]

    def categories(lam):
        result = rerank(candidates, RerankConfig(k=4, mmr_lambda=lam, explore_share=0), "r")
        return {c.category for c in result}

    assert categories(1.0) == {"x"}
    assert categories(0.5) == {"x", "y", "z"}
    assert ids(rerank(candidates, RerankConfig(k=4, mmr_lambda=0.5, explore_share=0), "r"))[0] == "x0"


def test_embedding_cosine_decides_similarity_over_category():
    # Same category but orthogonal embeddings: not redundant, so no diversity penalty.
    a = cand("a", 10.0, category="x", embedding=[1.0, 0.0])
    b = cand("b", 9.0, category="x", embedding=[0.0, 1.0])
    c = cand("c", 8.0, category="x", embedding=[1.0, 0.01])  # near-duplicate of a
    result = rerank([a, c, b], RerankConfig(k=2, mmr_lambda=0.5, explore_share=0), "r")
    assert ids(result) == ["a", "b"]


def _exploring_setup():
    established = [cand(f"s{n}", 10.0 - n * 0.1) for n in range(20)]
    cold = [cand(f"n{n}", -1.0, new=True) for n in range(20)]
    return established + cold, RerankConfig(k=10, explore_share=0.2, seed=7)


def test_the_same_rng_key_gives_the_same_list():
    candidates, config = _exploring_setup()
    assert rerank(candidates, config, "req-42") == rerank(candidates, config, "req-42")


def test_different_rng_keys_vary_the_exploration_picks():
    candidates, config = _exploring_setup()
    picks = {tuple(ids(c for c in rerank(candidates, config, f"req-{n}") if c.explored))
             for n in range(20)}
    assert len(picks) > 5


def test_the_exploration_draw_does_not_depend_on_input_order():
    candidates, config = _exploring_setup()
    shuffled = candidates[:]
    random.Random(0).shuffle(shuffled)
    assert ids(rerank(shuffled, config, "req-1")) == ids(rerank(candidates, config, "req-1"))


def test_empty_input_gives_an_empty_list():
    result, stats = rerank_with_stats([], RerankConfig(), "r")
    assert result == [] and stats.n_out == 0 and stats.n_explored == 0


def test_fewer_than_k_candidates_are_all_returned():
    candidates = [cand(f"i{n}", float(n), creator=f"c{n}", new=n == 0) for n in range(4)]
    result = rerank(candidates, RerankConfig(k=10), "r")
    assert sorted(ids(result)) == ["i0", "i1", "i2", "i3"]


def test_k_zero_returns_nothing():
    assert rerank([cand("a", 1.0, new=True)], RerankConfig(k=0, explore_share=0.5), "r") == []


def test_inputs_are_not_mutated():
    candidates, config = _exploring_setup()
    before = copy.deepcopy(candidates)
    result = rerank(candidates, config, "r")
    assert any(c.explored for c in result)
    assert candidates == before


@pytest.mark.parametrize(
    "bad",
    [dict(k=-1), dict(mmr_lambda=1.5), dict(explore_share=-0.1), dict(creator_cap=0),
     dict(explore_after=-1)],
)
def test_config_rejects_out_of_range_values(bad):
    with pytest.raises(ValueError):
        RerankConfig(**bad)
