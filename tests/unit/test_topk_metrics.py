import math

import pytest

from eightbox.training.topk_metrics import hit_rate_at_k, ndcg_at_k, precision_at_k, recall_at_k


def test_recall_is_one_when_truth_is_returned():
    assert recall_at_k([["a", "b", "c"]], [{"a", "c"}], k=3) == 1.0


def test_recall_counts_only_the_first_k_recommendations():
    assert recall_at_k([["x", "a", "b"]], [{"a", "b"}], k=2) == 0.5


def test_recall_is_averaged_over_users():
    assert recall_at_k([["a"], ["x"]], [{"a"}, {"b"}], k=1) == 0.5


def test_users_with_nothing_relevant_are_skipped():
    assert recall_at_k([["a"], ["a"]], [{"a"}, set()], k=1) == 1.0
    assert recall_at_k([["a"]], [set()], k=1) == 0.0


def test_precision_divides_by_k_even_when_the_list_is_shorter():
    assert precision_at_k([["a", "b"]], [{"a", "b"}], k=4) == 0.5


def test_a_repeated_recommendation_counts_once():
    assert precision_at_k([["a", "a", "b"]], [{"a"}], k=2) == 0.5
    assert recall_at_k([["a", "a"]], [{"a", "b"}], k=2) == 0.5


def test_hit_rate_is_the_share_of_users_with_a_hit_in_the_top_k():
    assert hit_rate_at_k([["a", "x"], ["x", "y"], ["y", "b"]], [{"a"}, {"b"}, {"b"}], k=2) == pytest.approx(2 / 3)


def test_ndcg_is_one_for_the_ideal_ranking():
    assert ndcg_at_k([["a", "b", "x"]], [{"a", "b"}], k=3) == pytest.approx(1.0)


def test_ndcg_discounts_a_later_hit_by_log2_of_its_position():
    assert ndcg_at_k([["x", "a"]], [{"a"}], k=2) == pytest.approx(1 / math.log2(3))


def test_ndcg_ideal_is_capped_at_k_relevant_items():
    # three relevant items but k=1: a hit at the top is already the best possible
    assert ndcg_at_k([["a"]], [{"a", "b", "c"}], k=1) == pytest.approx(1.0)


def test_metrics_refuse_a_nonpositive_k_and_mismatched_lengths():
    with pytest.raises(ValueError, match="k must be"):
        recall_at_k([["a"]], [{"a"}], k=0)
    with pytest.raises(ValueError, match="relevant sets"):
        ndcg_at_k([["a"], ["b"]], [{"a"}], k=1)


def test_recall_values_are_per_user_and_their_standard_error_is_of_the_mean():
    from eightbox.training.topk_metrics import recall_values, standard_error

    values = recall_values([["a", "b"], ["c"], ["x"]], [{"a"}, {"c", "d"}, set()], k=2)
    assert values == [1.0, 0.5]  # the user with nothing relevant is skipped, as in recall_at_k
    assert abs(standard_error(values) - 0.25) < 1e-12 and math.isnan(standard_error([1.0]))  # one value: no spread
