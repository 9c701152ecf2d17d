"""Krippendorff's alpha against hand-computed and published values; annotator reliability."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from tasks.filters.agreement import AgreementAccumulator, ReliabilityAccumulator, krippendorff_alpha

# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: 4 observers, 12 units, missing
# values as None. Published: nominal 0.743, ordinal 0.815, interval 0.849.
KRIPPENDORFF_2011 = [
    [1, 1, None, 1], [2, 2, 3, 2], [3, 3, 3, 3], [3, 3, 3, 3], [2, 2, 2, 2], [1, 2, 3, 4],
    [4, 4, 4, 4], [1, 1, 2, 1], [2, 2, 2, 2], [None, 5, 5, 5], [None, None, 1, 1], [None, None, 3, None],
]


@pytest.mark.parametrize("metric, published", [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849)])
def test_krippendorff_2011_example(metric, published):
    assert krippendorff_alpha(KRIPPENDORFF_2011, metric) == pytest.approx(published, abs=5e-4)


def test_two_units_by_hand():
    # Units (1,1) and (1,2). Coincidences: o11 = 2, o12 = o21 = 1; n1 = 3, n2 = 1, n = 4.
    # interval: observed sum o*d2 = 2, expected sum n_c n_k d2 = 2*3*1*1 = 6 -> 1 - 3 * 2 / 6 = 0.
    assert krippendorff_alpha([[1, 1], [1, 2]], "interval") == pytest.approx(0.0)
    # ordinal: d2_12 = (n1 + n2 - (n1 + n2) / 2)^2 = 4 -> 1 - 3 * (2 * 4) / (2 * 3 * 4) = 0.
    assert krippendorff_alpha([[1, 1], [1, 2]], "ordinal") == pytest.approx(0.0)


def test_three_values_ordinal_differs_from_interval():
    # Units (1,2), (2,3), (1,1), (3,3). o11=2, o12=o21=1, o22=0, o23=o32=1, o33=2; n1=3, n2=2, n3=3, n=8.
    # interval: observed 2*1 + 2*1 = 4; expected 2*(3*2*1 + 3*3*4 + 2*3*1) = 96 -> 1 - 7*4/96 = 0.708333
    units = [[1, 2], [2, 3], [1, 1], [3, 3]]
    assert krippendorff_alpha(units, "interval") == pytest.approx(1 - 7 * 4 / 96)
    # ordinal: d2_12 = (3+2 - 2.5)^2 = 6.25, d2_23 = (2+3 - 2.5)^2 = 6.25, d2_13 = (3+2+3 - 3)^2 = 25
    # observed 2*6.25 + 2*6.25 = 25; expected 2*(3*2*6.25 + 2*3*6.25 + 3*3*25) = 600 -> 1 - 7*25/600
    assert krippendorff_alpha(units, "ordinal") == pytest.approx(1 - 7 * 25 / 600)


def test_perfect_agreement_and_undefined_cases():
    assert krippendorff_alpha([[1, 1], [3, 3, 3], [5, 5]], "interval") == pytest.approx(1.0)
    assert krippendorff_alpha([[4, 4], [4, 4]], "ordinal") is None      # no variation: undefined
    assert krippendorff_alpha([[1], [2], [3]], "interval") is None      # no unit has two ratings
    with pytest.raises(ValueError, match="unknown metric"):
        krippendorff_alpha([[1, 2]], "ratio")


def test_accumulating_batches_equals_one_pass_and_sources_are_separate():
    rows = [(u, v) for u, vals in enumerate(KRIPPENDORFF_2011) for v in vals if v is not None]
    frame = pd.DataFrame(rows, columns=["row", "rating"]).assign(source="a")
    acc = AgreementAccumulator()
    acc.add(frame[frame["row"] < 5])
    acc.add(frame[frame["row"] >= 5])
    acc.add(pd.DataFrame({"row": [0, 0], "rating": [1.0, 5.0], "source": ["b", "b"]}))
    report = acc.report()
    assert report["a"]["alpha_interval"] == pytest.approx(0.849, abs=5e-4)
    assert report["a"]["pairable_units"] == 11
    assert report["b"]["alpha_interval"] is None or math.isfinite(report["b"]["alpha_interval"])


def test_reliability_flags_the_annotator_who_contradicts_the_others():
    rows = []
    for item in range(10):
        truth = 1 + item % 5
        rows += [(item, "a", truth), (item, "b", truth), (item, "c", min(5, truth + (item % 2))),
                 (item, "troll", 6 - truth)]
    frame = pd.DataFrame(rows, columns=["row", "annotator", "rating"]).astype({"rating": float})
    acc = ReliabilityAccumulator()
    acc.add(frame[frame["row"] < 5])
    acc.add(frame[frame["row"] >= 5].assign(row=lambda f: f["row"] - 5))  # row ids are per batch
    report = acc.report(min_items=5, min_correlation=0.2, max_mean_abs_diff=1.5)
    assert report["troll"]["unreliable"] and report["troll"]["correlation"] < 0
    assert not any(report[a]["unreliable"] for a in ("a", "b", "c"))
    assert report["a"]["items"] == 10 and report["a"]["correlation"] > 0.5
    # under min_items nobody is judged
    assert not any(s["unreliable"] for s in acc.report(11, 0.2, 1.5).values())
