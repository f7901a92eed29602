"""Experiment assignment: a pure function of (salt, user id), balanced, and independent across layers."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections import Counter

import pytest

from eightbox.serving.experiments import (CHALLENGER, CHAMPION, HOLDBACK, INTERLEAVE, INTERLEAVED, OFF,
                                          Assignment, ExperimentConfig, Layer, assign, bucket)

USERS = [f"user-{i}" for i in range(100_000)]


def test_the_hash_scheme_is_pinned_so_an_upgrade_does_not_reshuffle_users():
    # Computed once and frozen: if this changes, every running experiment's population moves.
    assert bucket("u42", "model-1") == 0.8415985801096305
    assert assign("u42", Layer("model", "model-1", {CHAMPION: 0.5, CHALLENGER: 0.5})) == CHALLENGER
    assert assign("u42", Layer("model", "model-1", {CHAMPION: 0.9, CHALLENGER: 0.1})) == CHAMPION


def test_the_same_user_gets_the_same_arm_in_another_process_whatever_its_hash_seed():
    layer = Layer("model", "model-1", {CHAMPION: 0.5, CHALLENGER: 0.5})
    here = [assign(f"u{i}", layer) for i in range(200)]
    assert [assign(f"u{i}", layer) for i in range(200)] == here  # and again in this process
    code = ("from eightbox.serving.experiments import Layer, assign\n"
            "layer = Layer('model', 'model-1', {'champion': 0.5, 'challenger': 0.5})\n"
            "print(','.join(assign(f'u{i}', layer) for i in range(200)))")
    for seed in ("1", "2"):  # a different PYTHONHASHSEED would change any hash()-based assignment
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONHASHSEED": seed}, timeout=60)
        assert out.stdout.strip().split(",") == here


@pytest.mark.parametrize("arms", [{CHAMPION: 0.5, CHALLENGER: 0.5}, {CHAMPION: 0.9, CHALLENGER: 0.1},
                                  {"a": 0.2, "b": 0.3, "c": 0.5}])
def test_each_arm_gets_its_share_within_four_binomial_sigma_over_100k_users(arms):
    counts = Counter(assign(u, Layer("l", "salt-x", arms)) for u in USERS)
    n = len(USERS)
    for arm, share in arms.items():
        sigma = math.sqrt(n * share * (1 - share))
        assert abs(counts[arm] - n * share) < 4 * sigma, (arm, counts[arm], n * share)


def chi_square_2x2(pairs) -> float:
    joint = Counter(pairs)
    n = sum(joint.values())
    rows, cols = Counter(a for a, _ in pairs), Counter(b for _, b in pairs)
    return sum((joint[(r, c)] - rows[r] * cols[c] / n) ** 2 / (rows[r] * cols[c] / n)
               for r in rows for c in cols)


def test_the_model_and_interleave_layers_are_independent():
    config = ExperimentConfig(challenger_share=0.5, interleave_share=0.3)
    model, interleave = config.layers
    pairs = [(assign(u, model), assign(u, interleave)) for u in USERS]
    # 1 degree of freedom: chi-square < 16 is |z| < 4 on the interaction.
    assert chi_square_2x2(pairs) < 16
    both = sum(1 for p in pairs if p == (CHALLENGER, INTERLEAVE)) / len(pairs)
    assert abs(both - 0.5 * 0.3) < 4 * math.sqrt(0.15 * 0.85 / len(pairs))
    # The check has teeth: two layers sharing a salt are the same draw, maximally dependent.
    same = Layer("other", model.salt, {OFF: 0.7, INTERLEAVE: 0.3})
    assert chi_square_2x2([(assign(u, model), assign(u, same)) for u in USERS[:10_000]]) > 1_000


def test_layers_sharing_a_salt_are_refused():
    with pytest.raises(ValueError, match="different salts"):
        ExperimentConfig(model_salt="s", interleave_salt="s")


@pytest.mark.parametrize("arms", [{}, {"a": 0.5, "b": 0.4}, {"a": 1.2, "b": -0.2}])
def test_a_layer_whose_shares_are_not_a_distribution_is_refused(arms):
    with pytest.raises(ValueError):
        Layer("bad", "s", arms)


def test_a_zero_share_arm_gets_nobody_and_a_full_share_arm_gets_everybody():
    users = USERS[:20_000]
    assert {ExperimentConfig().assign(u).model_arm for u in users} == {CHAMPION}
    assert {ExperimentConfig(challenger_share=1.0).assign(u).model_arm for u in users} == {CHALLENGER}
    assert not any(ExperimentConfig(challenger_share=0.5).assign(u).interleaved for u in users)


def test_without_a_loaded_challenger_everyone_gets_the_champion_alone():
    config = ExperimentConfig(challenger_share=0.5, interleave_share=0.5, shadow_challenger=True)
    assert {config.assign(u, challenger_ready=False) for u in USERS[:2_000]} == {
        Assignment(CHAMPION, interleaved=False, shadow=False)}


def test_shadow_scoring_covers_exactly_the_requests_that_do_not_already_score_the_challenger():
    config = ExperimentConfig(challenger_share=0.3, interleave_share=0.2, shadow_challenger=True)
    seen = Counter()
    for u in USERS[:5_000]:
        a = config.assign(u)
        assert a.shadow == (a.model_arm == CHAMPION and not a.interleaved)
        assert a.label == (INTERLEAVED if a.interleaved else a.model_arm)
        seen[a.label] += 1
    assert set(seen) == {CHAMPION, CHALLENGER, INTERLEAVED}
    assert not any(ExperimentConfig(challenger_share=0.3).assign(u).shadow for u in USERS[:5_000])


def test_a_zero_holdback_leaves_every_assignment_where_it_was_before_holdbacks_existed():
    two_arms = Layer("model", "model-1", {CHAMPION: 0.7, CHALLENGER: 0.3})
    config = ExperimentConfig(challenger_share=0.3)
    assert [config.assign(u).model_arm for u in USERS[:20_000]] == [assign(u, two_arms) for u in USERS[:20_000]]


def test_the_holdback_gets_its_share_from_the_champion_and_the_challengers_users_stay_put():
    without = ExperimentConfig(challenger_share=0.2)
    held = ExperimentConfig(challenger_share=0.2, holdback_share=0.1)
    arms = [(without.assign(u).model_arm, held.assign(u).model_arm) for u in USERS]
    moved = Counter(pair for pair in arms if pair[0] != pair[1])
    assert set(moved) == {(CHAMPION, HOLDBACK)}, "only champion users move, and only to the holdback"
    n = len(USERS)
    assert abs(sum(1 for _, b in arms if b == HOLDBACK) - 0.1 * n) < 4 * math.sqrt(n * 0.1 * 0.9)


def test_holdback_users_see_the_holdback_alone_or_the_champion_when_it_is_not_loaded():
    config = ExperimentConfig(challenger_share=0.3, holdback_share=0.3, interleave_share=0.5, shadow_challenger=True)
    held = [u for u in USERS[:5_000] if config.assign(u).model_arm == HOLDBACK]
    assert len(held) > 1_000
    assert {config.assign(u) for u in held} == {Assignment(HOLDBACK, interleaved=False, shadow=False)}
    fallback = [config.assign(u, holdback_ready=False) for u in held]
    assert {a.model_arm for a in fallback} == {CHAMPION}
    assert {a.label for a in fallback} == {CHAMPION, INTERLEAVED}, "back on the champion, they join its layers"
    assert {config.assign(u, challenger_ready=False).model_arm for u in held} == {HOLDBACK}


def test_a_challenger_and_holdback_over_everyone_is_refused():
    with pytest.raises(ValueError, match="challenger_share \\+ holdback_share"):
        ExperimentConfig(challenger_share=0.6, holdback_share=0.5)
    assert {ExperimentConfig(challenger_share=0.6, holdback_share=0.4).assign(u).model_arm
            for u in USERS[:5_000]} == {CHALLENGER, HOLDBACK}


def test_the_registry_tags_name_both_salts_so_one_bump_redraws_every_population():
    config = ExperimentConfig.from_tags({"challenger_share": 0.5, "interleave_share": 0.1, "shadow": True,
                                         "holdback_share": 0.2, "salt": "7"})
    assert config == ExperimentConfig(challenger_share=0.5, interleave_share=0.1, shadow_challenger=True,
                                      holdback_share=0.2, model_salt="model-7", interleave_salt="interleave-7")
    assert ExperimentConfig.from_tags({}) == ExperimentConfig(), "no tags: the defaults, everyone on the champion"
