"""Team-draft interleaving, checked against its definition (Radlinski et al. 2008)."""

from __future__ import annotations

import math
import random

import pytest

from eightbox.serving.interleaving import credit, team_draft, winner


def overlapping_lists(seed: int, n: int = 30, pool: int = 45) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    items = [f"i{j}" for j in range(pool)]
    return rng.sample(items, n), rng.sample(items, n)  # two rankings sharing about 2/3 of their items


@pytest.mark.parametrize("key", ["req-1", "req-2", "req-3", "req-4"])
def test_identical_lists_interleave_to_that_same_list(key):
    ranking = [f"i{j}" for j in range(12)]
    ids, teams = team_draft(ranking, ranking, k=10, rng_key=key)
    assert ids == ranking[:10]
    assert teams.count("A") == teams.count("B") == 5


def test_every_item_is_its_teams_highest_ranked_item_not_yet_shown():
    for seed in range(200):
        a, b = overlapping_lists(seed)
        ids, teams = team_draft(a, b, k=20, rng_key=f"req-{seed}")
        for i, (item, team) in enumerate(zip(ids, teams)):
            ranking = a if team == "A" else b
            assert item == next(x for x in ranking if x not in ids[:i])


def test_after_every_full_round_both_teams_have_added_the_same_number():
    for seed in range(200):
        a, b = overlapping_lists(seed)
        _, teams = team_draft(a, b, k=21, rng_key=f"req-{seed}")
        for r in range(1, len(teams) // 2 + 1):
            assert teams[: 2 * r].count("A") == r  # each round is one A pick and one B pick


def test_the_odd_slot_goes_to_each_team_about_half_the_time():
    keys = 4_000
    a_gets_three = 0
    for seed in range(keys):
        a, b = overlapping_lists(seed % 50)
        _, teams = team_draft(a, b, k=5, rng_key=f"req-{seed}")
        assert teams.count("A") in (2, 3)  # ceil(k/2) or floor(k/2)
        a_gets_three += teams.count("A") == 3
    assert abs(a_gets_three - keys / 2) < 4 * math.sqrt(keys / 4)


def test_the_same_key_gives_the_same_interleaving_and_keys_vary_it():
    a, b = overlapping_lists(7)
    assert team_draft(a, b, 10, "req-x") == team_draft(a, b, 10, "req-x")
    assert len({tuple(team_draft(a, b, 10, f"req-{i}").teams) for i in range(20)}) > 1


def test_overlapping_lists_never_show_an_item_twice():
    for seed in range(200):
        a, b = overlapping_lists(seed)
        ids, teams = team_draft(a, b + b[:5], k=40, rng_key=str(seed))  # also a repeat inside b
        assert len(ids) == len(set(ids)) == len(teams) == min(40, len(set(a) | set(b)))


def test_when_one_list_runs_out_the_other_fills_the_page():
    ids, teams = team_draft(["x", "y", "z"], [], k=3, rng_key="r")
    assert ids == ["x", "y", "z"] and teams == ["A", "A", "A"]
    ids, teams = team_draft(["x"], ["x", "y", "z", "w"], k=3, rng_key="r")
    assert ids == ["x", "y", "z"] and teams[1:] == ["B", "B"]  # A had only "x" to offer
    assert team_draft(["x"], ["y"], k=0, rng_key="r") == ([], [])
    with pytest.raises(ValueError):
        team_draft(["x"], ["y"], k=-1, rng_key="r")


def test_a_click_credits_the_team_that_contributed_the_clicked_item():
    teams = ["B", "A", "A", "B", "A"]
    assert credit(teams, []) == {"A": 0, "B": 0}
    assert credit(teams, [0, 3]) == {"A": 0, "B": 2}
    assert credit(teams, [1, 1, 4, 0]) == {"A": 2, "B": 1}  # a repeated click counts once
    assert winner(credit(teams, [1, 1, 4, 0])) == "A"
    assert winner(credit(teams, [0, 1])) == "tie" and winner(credit(teams, [])) == "tie"
    with pytest.raises(ValueError, match="outside"):
        credit(teams, [5])


def test_a_better_ranker_wins_more_interleaved_comparisons():
    # Users click only items from the "good" set, which list A ranks first and list B ranks last.
    items = [f"i{j}" for j in range(20)]
    good = set(items[:5])
    a, b = items, items[::-1]
    wins = {"A": 0, "B": 0, "tie": 0}
    for r in range(500):
        ids, teams = team_draft(a, b, k=6, rng_key=f"req-{r}")
        wins[winner(credit(teams, [i for i, x in enumerate(ids) if x in good]))] += 1
    assert wins["A"] == 500  # A contributes its good items, B its bad ones
