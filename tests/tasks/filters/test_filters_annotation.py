"""Annotation filters, each at and around its threshold, on hand-made records."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from schemas.filters import FilterSpec
from schemas.record import RECORD_SCHEMA
from tasks.filters import FILTERS, FilterBatch, build_chain


def record(anns, rid="r", response="A perfectly fine answer to the question.", source="s"):
    return {"id": rid, "source": source, "meta": "{}",
            "messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": response}],
            "annotations": [{"annotator_id": a, "rating": r, "labels": list(lb)} for a, r, lb in anns]}


def batch_of(*anns_lists, **kw) -> FilterBatch:
    rows = [record(a, rid=f"r{i}") for i, a in enumerate(anns_lists)]
    return FilterBatch(pa.Table.from_pylist(rows, RECORD_SCHEMA), **kw)


def run(name, batch, **params):
    spec = FilterSpec(name=name, params=params)
    (_, fn), = build_chain([spec])
    res = fn(batch)
    return res, [None if k else res.reason(i) for i, k in enumerate(res.keep)]


def test_min_annotators_counts_distinct_people():
    b = batch_of([("a", 4, [])], [("a", 4, []), ("b", 4, [])], [("a", 4, []), ("a", 5, [])],
                 [(None, 4, []), (None, 5, [])])
    res, reasons = run("min_annotators", b, min_count=2)
    # the same annotator twice counts once; two annotations without an id are two people
    assert reasons == ["too_few_annotators", None, "too_few_annotators", None]
    assert res.detail(0) == "annotators=1<2"


@pytest.mark.parametrize("labels, expected", [
    ([["toxic"], ["toxic"], [], []], "flagged:toxic"),     # exactly half: flagged (min_share 0.5 is inclusive)
    ([["toxic"], [], []], None),                            # a lone minority flag is not enough
    ([["spam"], ["spam", "toxic"], ["toxic"]], "flagged:spam"),  # tie at 2/3 -> the label listed first wins
    ([["off_topic"], ["off_topic"], ["toxic"]], "flagged:off_topic"),
    ([["typo"], ["typo"]], None),                           # labels not in the flagged list never drop
])
def test_flagged_labels_at_half(labels, expected):
    b = batch_of([(f"a{i}", 4, lb) for i, lb in enumerate(labels)])
    _, reasons = run("flagged_labels", b, labels=["spam", "toxic", "pii", "off_topic"], min_share=0.5)
    assert reasons == [expected]


def test_min_rating_threshold_is_inclusive_and_median_differs_from_mean():
    b = batch_of([("a", 3, []), ("b", 3, [])], [("a", 3, []), ("b", 2.98, [])],
                 [("a", 1, []), ("b", 4, []), ("c", 3.5, [])], [("a", None, []), ("b", None, [])])
    _, by_mean = run("min_rating", b, threshold=3.0, aggregate="mean")
    assert by_mean == [None, "low_rating", "low_rating", "no_rating"]  # mean of 1, 4, 3.5 is 2.83
    _, by_median = run("min_rating", b, threshold=3.0, aggregate="median")
    assert by_median == [None, "low_rating", None, "no_rating"]  # median of 1, 4, 3.5 is 3.5


def test_min_rating_ignores_null_ratings_of_some_annotators():
    b = batch_of([("a", 4, []), ("b", None, ["spam"])])
    res, reasons = run("min_rating", b, threshold=3.5)
    assert reasons == [None]
    assert b.annotation_stats()["n_ratings"].tolist() == [1]


@pytest.mark.parametrize("ratings, kept", [([3, 5], True), ([2, 5], False), ([1, 4, 3], False), ([4], True),
                                           ([2.5, 4.5], True)])
def test_max_rating_spread_boundary(ratings, kept):
    b = batch_of([(f"a{i}", r, []) for i, r in enumerate(ratings)])
    res, reasons = run("max_rating_spread", b, max_spread=2.0)
    assert bool(res.keep[0]) is kept
    assert reasons == [None if kept else "low_agreement"]


def test_min_label_agreement_majority_share():
    b = batch_of([("a", 4, ["x"]), ("b", 4, ["x"]), ("c", 4, ["y"])],   # 2/3 agree on {x}
                 [("a", 4, ["x"]), ("b", 4, ["y"]), ("c", 4, [])],      # 1/3: all differ
                 [("a", 4, []), ("b", 4, [])],                          # both gave no label: agree
                 [("a", 4, ["x"])])                                     # one annotator: not judged
    _, reasons = run("min_label_agreement", b, min_share=0.6)
    assert reasons == [None, "low_label_agreement", None, None]
    assert np.allclose(b.majority_label_share()[:3], [2 / 3, 1 / 3, 1.0])


def test_excluded_annotators_are_left_out_before_aggregating():
    anns = [("good1", 4, []), ("good2", 4, []), ("troll", 1, ["spam"])]
    _, with_troll = run("max_rating_spread", batch_of(anns), max_spread=2.0)
    _, without = run("max_rating_spread", batch_of(anns, exclude_annotators=frozenset({"troll"})), max_spread=2.0)
    assert with_troll == ["low_agreement"] and without == [None]


def test_take_keeps_views_aligned_with_rows():
    b = batch_of([("a", 1, [])], [("a", 5, []), ("b", 4, [])], [("c", 2, []), ("d", 3, [])])
    b.annotation_stats()
    b.annotations()
    sub = b.take(np.array([2, 1]))
    assert sub.table.column("id").to_pylist() == ["r2", "r1"]
    assert sub.annotation_stats()["mean"].tolist() == [2.5, 4.5]
    assert sorted(sub.annotations()["row"].tolist()) == [0, 0, 1, 1]
    assert sub.label_shares() == [{}, {}]


def test_every_configured_name_has_a_function():
    from schemas.filters import FILTER_PARAMS
    build_chain([FilterSpec(name=n) for n in FILTER_PARAMS if n != "language"])
    assert set(FILTERS) == set(FILTER_PARAMS)
