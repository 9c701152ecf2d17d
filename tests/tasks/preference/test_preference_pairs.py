"""Pair construction on hand-worked groups: every number below was worked out by hand from the ratings."""
import pytest

from schemas.preference import PreferenceConfig
from tasks.preference.pairs import (
    Response,
    collect_ratings,
    judge,
    label_response,
    ordering_agreement,
    pair_group,
)


def resp(rid, **ratings):
    return Response(rid, {a: float(r) for a, r in ratings.items()})


CFG = PreferenceConfig(min_margin=1.0, min_agreement=0.6, max_pairs_per_prompt=2)


def test_collect_ratings_skips_nulls_averages_repeats_and_keeps_anonymous_apart():
    got = collect_ratings([{"annotator_id": "a", "rating": 4}, {"annotator_id": "a", "rating": 2},
                           {"annotator_id": "b", "rating": None}, {"annotator_id": None, "rating": 5},
                           {"annotator_id": None, "rating": 1}])
    assert got["a"] == 3.0 and "b" not in got
    assert sorted(v for k, v in got.items() if k != "a") == [1.0, 5.0]  # two anonymous raters, not one


def test_agreement_shared_then_cross():
    a, b = resp("a", x=5, y=4, z=2), resp("b", x=1, y=4, z=1)
    assert ordering_agreement(a, b, "auto") == (2 / 3, 3, "shared")  # x: 5>1, y: 4=4 (no win), z: 2>1
    c, d = resp("c", x=5, y=3), resp("d", p=4, q=2)
    # no shared annotator: combinations 5>4, 5>2, 3>4 (no), 3>2 -> 3 of 4
    assert ordering_agreement(c, d, "auto") == (0.75, 4, "cross")
    assert ordering_agreement(c, d, "shared") == (None, 0, "shared")


def test_judge_orders_chosen_first_and_names_the_reason():
    good, bad = resp("g", x=5, y=5, z=4), resp("b", x=2, y=1, z=2)
    cand = judge(bad, good, CFG)  # argument order does not matter
    assert (cand.chosen.id, cand.rejected.id, cand.reason) == ("g", "b", None)
    assert cand.margin == pytest.approx(14 / 3 - 5 / 3) and cand.agreement == 1.0
    assert judge(resp("a", x=4, y=5), resp("b", x=5, y=4), CFG).reason == "tie"
    assert judge(resp("a", x=4, y=4, z=5), resp("b", x=4, y=4, z=4), CFG).reason == "low_margin"  # 1/3 < 1
    # means 3.5 vs 2.0 (margin 1.5), but only x and y prefer a: 2 of 4 < 0.6
    assert judge(resp("a", x=5, y=5, z=2, w=2), resp("b", x=1, y=1, z=3, w=3), CFG).reason == "annotators_disagree"
    shared_only = CFG.model_copy(update={"agreement": "shared"})
    assert judge(resp("a", x=5), resp("b", y=1), shared_only).reason == "no_shared_annotators"


def test_group_of_four_keeps_the_k_widest_pairs_and_explains_every_response():
    # aggregates: g 5, m 3, b1 5/3, b2 1. Candidates (6): g>b2 4, g>b1 10/3, g>m 2, m>b2 2, m>b1 4/3 (all agreed),
    # b1>b2 2/3 (low margin). k=2 keeps g>b2 and g>b1; g>m, m>b2, m>b1 are over_max_pairs.
    group = [resp("g", x=5, y=5, z=5), resp("m", x=3, y=3, z=3), resp("b1", x=2, y=2, z=1), resp("b2", x=1, y=1, z=1)]
    res = pair_group(group, CFG)
    assert [(c.chosen.id, c.rejected.id) for c in res.kept] == [("g", "b2"), ("g", "b1")]
    assert sorted((c.chosen.id, c.rejected.id, c.reason) for c in res.dropped_pairs) == [
        ("b1", "b2", "low_margin"), ("g", "m", "over_max_pairs"), ("m", "b1", "over_max_pairs"),
        ("m", "b2", "over_max_pairs")]
    assert res.response_reasons == {"m": "over_max_pairs"}  # its best candidate qualified but was cut by k
    assert res.prompt_reason is None
    assert len(res.kept) + len(res.dropped_pairs) == 6  # every candidate accounted for


def test_response_reason_is_the_furthest_check_its_candidates_reached():
    # a-b tie, a-c low margin (4.5 vs 4.0), b-c low margin: every response gets 'low_margin', the prompt too.
    res = pair_group([resp("a", x=4, y=5), resp("b", x=5, y=4), resp("c", x=4, y=4)], CFG)
    assert not res.kept
    assert res.response_reasons == {"a": "low_margin", "b": "low_margin", "c": "low_margin"}
    assert res.prompt_reason == "low_margin"
    res = pair_group([resp("a", x=4, y=5), resp("b", x=5, y=4)], CFG)
    assert res.response_reasons == {"a": "tie", "b": "tie"} and res.prompt_reason == "tie"


def test_single_unrated_and_given_pairs():
    res = pair_group([resp("only", x=5)], CFG)
    assert res.response_reasons == {"only": "single_response"} and res.prompt_reason == "single_response"
    res = pair_group([resp("r", x=5), Response("u", {})], CFG)
    assert res.response_reasons == {"r": "single_response", "u": "no_rating"}
    # A given pair without ratings is taken as given; its lone partner-less response is unpaired_explicit.
    given = [Response("c1", {}, "chosen", "p1"), Response("r1", {}, "rejected", "p1"), Response("c2", {}, "chosen", "p2")]
    res = pair_group(given, CFG)
    assert [(c.chosen.id, c.rejected.id, c.basis) for c in res.kept] == [("c1", "r1", "explicit")]
    assert res.response_reasons == {"c2": "unpaired_explicit"}
    # With ratings on both sides it is checked; ratings that reverse the given order disagree with it.
    res = pair_group([Response("c", {"x": 1.0}, "chosen", "p"), Response("r", {"x": 5.0}, "rejected", "p")], CFG)
    assert not res.kept and res.dropped_pairs[0].reason == "annotators_disagree"
    assert (res.dropped_pairs[0].chosen.id, res.dropped_pairs[0].agreement) == ("c", 0.0)


def test_kto_labels():
    cfg = PreferenceConfig(desirable_min_rating=4, undesirable_max_rating=2, min_agreement=0.6)
    got = label_response(resp("a", x=5, y=4, z=3), cfg)  # mean 4: desirable; 2 of 3 rated >= 4
    assert got.desirable and got.agreement == pytest.approx(2 / 3) and got.rating == 4.0
    assert label_response(resp("b", x=5, y=5, z=2, w=4), cfg).desirable  # mean 4, 3 of 4 agree
    assert label_response(resp("c", x=5, y=5, z=1, w=1, v=5), cfg) == "ambiguous_rating"  # mean 3.4
    assert label_response(resp("d", x=5, y=1, z=1, w=1, v=2), cfg).desirable is False  # mean 2, 4 of 5 <= 2
    assert label_response(resp("e", x=5, y=5, z=2, w=2, v=5, u=5), cfg).desirable  # 4 of 6 agree
    assert label_response(resp("f", x=5, y=5, z=3, w=3), cfg) == "annotators_disagree"  # mean 4, but 2 of 4
    assert label_response(Response("g", {}), cfg) == "no_rating"
    assert label_response(Response("h", {}, "rejected", "p"), cfg).desirable is False
