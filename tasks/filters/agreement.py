"""Dataset-level agreement: Krippendorff's alpha per source, and each annotator's agreement with the others.

Krippendorff's alpha (Krippendorff 2011, "Computing Krippendorff's Alpha-Reliability") from the coincidence
matrix o_ck, with n_c = sum_k o_ck and n = sum_c n_c:

    alpha = 1 - (n - 1) * sum_ck o_ck d2_ck / sum_ck n_c n_k d2_ck

where d2 is the squared difference of the metric: nominal (c != k), interval (c - k)^2, ordinal
(sum_{g=c..k} n_g - (n_c + n_k) / 2)^2. Only units (records) with at least two ratings are pairable. The matrix
is accumulated batch by batch (``AgreementAccumulator``), so alpha over a million records needs no second copy.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from tasks.filters.base import ANON_PREFIX

METRICS = ("nominal", "ordinal", "interval")


def coincidence_pairs(frame: pd.DataFrame, unit: str = "row", value: str = "rating") -> pd.DataFrame:
    """Weighted value pairs (c, k, w) of every pairable unit: w = n_c * (n_k - [c == k]) / (m_u - 1)."""
    frame = frame[[unit, value]].dropna()
    counts = frame.groupby([unit, value]).size().rename("cnt").reset_index()
    m = counts.groupby(unit)["cnt"].transform("sum")
    counts = counts[m >= 2].assign(m=m[m >= 2])
    pairs = counts.merge(counts[[unit, value, "cnt"]], on=unit, suffixes=("_c", "_k"))
    same = (pairs[f"{value}_c"] == pairs[f"{value}_k"]).astype(np.float64)
    w = pairs["cnt_c"] * (pairs["cnt_k"] - same) / (pairs["m"] - 1)
    return pd.DataFrame({"c": pairs[f"{value}_c"].to_numpy(), "k": pairs[f"{value}_k"].to_numpy(), "w": w.to_numpy()})


def alpha_from_coincidences(values: np.ndarray, o: np.ndarray, metric: str) -> float | None:
    """Alpha from sorted distinct values and their coincidence matrix; None when undefined (no variation)."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; use one of {METRICS}")
    n_c = o.sum(axis=1)
    n = n_c.sum()
    if n <= 1 or len(values) < 2:
        return None
    if metric == "nominal":
        d2 = 1.0 - np.eye(len(values))
    elif metric == "interval":
        d2 = (values[:, None] - values[None, :]) ** 2
    else:
        cum = np.concatenate([[0.0], np.cumsum(n_c)])
        lo = np.minimum.outer(np.arange(len(values)), np.arange(len(values)))
        hi = np.maximum.outer(np.arange(len(values)), np.arange(len(values)))
        d2 = (cum[hi + 1] - cum[lo] - (n_c[:, None] + n_c[None, :]) / 2) ** 2
    expected = (np.outer(n_c, n_c) * d2).sum()
    if expected == 0:
        return None
    return float(1.0 - (n - 1) * (o * d2).sum() / expected)


def krippendorff_alpha(units: Iterable[Iterable[float | None]], metric: str = "interval") -> float | None:
    """Alpha of reliability data given as one list of ratings per unit (None = missing)."""
    rows = [(u, v) for u, vals in enumerate(units) for v in vals if v is not None and not np.isnan(v)]
    acc = AgreementAccumulator()
    acc.add(pd.DataFrame(rows, columns=["row", "rating"]).assign(source=""))
    return acc.alpha("", metric)


@dataclass
class AgreementAccumulator:
    """Coincidences per source, summed over batches; frames have columns row, rating, source."""

    pairs: dict[str, dict[tuple[float, float], float]] = field(default_factory=lambda: defaultdict(dict))
    units: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def add(self, frame: pd.DataFrame) -> None:
        for source, part in frame.groupby("source", sort=False):
            pairs = coincidence_pairs(part)
            self.units[source] += int(part.dropna(subset=["rating"]).groupby("row").size().ge(2).sum())
            acc = self.pairs[source]
            for (c, k), w in pairs.groupby(["c", "k"])["w"].sum().items():
                acc[(c, k)] = acc.get((c, k), 0.0) + w

    def matrix(self, source: str) -> tuple[np.ndarray, np.ndarray]:
        acc = self.pairs.get(source, {})
        values = np.array(sorted({c for c, _ in acc} | {k for _, k in acc}), dtype=np.float64)
        pos = {v: i for i, v in enumerate(values)}
        o = np.zeros((len(values), len(values)))
        for (c, k), w in acc.items():
            o[pos[c], pos[k]] += w
        return values, o

    def alpha(self, source: str, metric: str) -> float | None:
        return alpha_from_coincidences(*self.matrix(source), metric)

    def report(self) -> dict[str, dict[str, float | int | None]]:
        out: dict[str, dict[str, float | int | None]] = {}
        for source in sorted(set(self.pairs) | set(self.units)):
            values, o = self.matrix(source)
            out[source] = {f"alpha_{m}": alpha_from_coincidences(values, o, m) for m in METRICS}
            out[source]["pairable_units"] = self.units.get(source, 0)
        return out


@dataclass
class ReliabilityAccumulator:
    """Per annotator, sums over the items they share with others: own rating x vs the others' mean y."""

    sums: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(
        columns=["n", "x", "y", "xx", "yy", "xy", "absdiff"], dtype=np.float64))

    def add(self, frame: pd.DataFrame) -> None:
        rated = frame.dropna(subset=["rating"])
        by_row = rated.groupby("row")["rating"]
        total, count = by_row.transform("sum"), by_row.transform("count")
        # Anonymous annotators (no id) still count in the others' mean but get no reliability line of their own.
        shared = rated[count >= 2]
        if shared.empty:
            return
        x = shared["rating"].to_numpy()
        y = ((total[count >= 2] - shared["rating"]) / (count[count >= 2] - 1)).to_numpy()
        part = pd.DataFrame({"annotator": shared["annotator"].to_numpy(), "n": 1.0, "x": x, "y": y, "xx": x * x,
                             "yy": y * y, "xy": x * y, "absdiff": np.abs(x - y)})
        part = part[~part["annotator"].str.startswith(ANON_PREFIX)].groupby("annotator").sum()
        self.sums = part if self.sums.empty else self.sums.add(part, fill_value=0.0)

    def report(self, min_items: int, min_correlation: float, max_mean_abs_diff: float) -> dict[str, dict]:
        """Per annotator: items, Pearson r and mean |x - y| against the others, and whether they look unreliable."""
        out = {}
        for annotator, s in self.sums.sort_index().iterrows():
            n = s["n"]
            cov = s["xy"] / n - (s["x"] / n) * (s["y"] / n)
            var_x, var_y = s["xx"] / n - (s["x"] / n) ** 2, s["yy"] / n - (s["y"] / n) ** 2
            r = cov / np.sqrt(var_x * var_y) if var_x > 1e-12 and var_y > 1e-12 else None
            mad = s["absdiff"] / n
            judged = n >= min_items
            unreliable = judged and ((r is not None and r < min_correlation) or mad > max_mean_abs_diff)
            out[str(annotator)] = {"items": int(n), "correlation": None if r is None else round(float(r), 4),
                                   "mean_abs_diff": round(float(mad), 4), "unreliable": bool(unreliable)}
        return out
