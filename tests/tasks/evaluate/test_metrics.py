"""Task metrics against scores worked out by hand on a small fixed set, overall and per family."""
import math

import pytest

from tasks.evaluate.metrics import (
    aggregate,
    contains_answer,
    normalize_answer,
    rouge_l,
    score_item,
    token_f1,
)

METRICS = ["exact_match", "normalized_exact_match", "contains_answer", "token_f1", "rouge_l"]
# (prediction, reference, family, hand-computed scores in METRICS order)
CASES = [
    ("Paris", "Paris", "geo", (1, 1, 1, 1, 1)),
    # normalised: "answer is paris" vs "paris"; F1: 1 common of 3 predicted, 1 reference -> 2*(1/3)*1/(4/3)=0.5;
    # ROUGE-L keeps "the": LCS 1 of 4 predicted tokens -> 2*(1/4)*1/(5/4)=0.4
    ("The answer is Paris.", "Paris", "geo", (0, 0, 1, 0.5, 0.4)),
    ("paris!", "Paris", "geo", (0, 1, 1, 1, 1)),
    ("Lyon", "Paris", "geo", (0, 0, 0, 0, 0)),
    # "red blue" is no run of "red green blue"; F1 and ROUGE-L: 2 of 3 predicted, 2 of 2 -> 0.8
    ("red green blue", "red blue", "list", (0, 0, 0, 0.8, 0.8)),
]


@pytest.mark.parametrize("pred,ref,family,expected", CASES)
def test_each_metric_matches_the_hand_computed_score(pred, ref, family, expected):
    got = score_item(pred, ref, METRICS)
    assert [got[m] for m in METRICS] == pytest.approx(list(expected))


def test_means_overall_and_per_family_match_the_hand_computed_ones():
    scores = [score_item(p, r, METRICS) for p, r, _, _ in CASES]
    agg = aggregate(scores, [f for _, _, f, _ in CASES])
    assert agg[""]["n"] == 5 and agg["geo"]["n"] == 4 and agg["list"]["n"] == 1
    assert agg[""]["exact_match"] == pytest.approx(1 / 5)
    assert agg[""]["normalized_exact_match"] == pytest.approx(2 / 5)
    assert agg[""]["contains_answer"] == pytest.approx(3 / 5)
    assert agg[""]["token_f1"] == pytest.approx((1 + 0.5 + 1 + 0 + 0.8) / 5)
    assert agg[""]["rouge_l"] == pytest.approx((1 + 0.4 + 1 + 0 + 0.8) / 5)
    assert agg["geo"]["exact_match"] == pytest.approx(1 / 4) and agg["geo"]["token_f1"] == pytest.approx(2.5 / 4)
    assert agg["list"]["rouge_l"] == pytest.approx(0.8)


def test_items_without_a_family_count_overall_only_and_nan_scores_are_left_out():
    agg = aggregate([{"m": 1.0}, {"m": math.nan}, {"m": 0.0}], ["a", "a", None])
    assert agg[""] == {"n": 3.0, "m": 0.5, "n_m": 2.0}
    assert agg["a"] == {"n": 2.0, "m": 1.0, "n_m": 1.0}


def test_normalisation_and_edge_cases():
    assert normalize_answer("  The  Quick, brown FOX!! ") == "quick brown fox"
    assert contains_answer("it is a cat", "cat") == 1 and contains_answer("concatenate", "cat") == 0
    assert token_f1("", "") == 1 and token_f1("x", "") == 0 and rouge_l("", "") == 1 and rouge_l("a", "") == 0
    with pytest.raises(KeyError, match="unknown task metrics"):
        score_item("a", "a", ["bleu"])
