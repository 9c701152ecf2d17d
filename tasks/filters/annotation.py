"""Annotation-quality filters: how many annotators, what they rated, whether they agree, what they flagged."""
from __future__ import annotations

import numpy as np

from schemas.filters import (
    FlaggedLabelsParams,
    MaxRatingSpreadParams,
    MinAnnotatorsParams,
    MinLabelAgreementParams,
    MinRatingParams,
)
from tasks.filters.base import FilterBatch, FilterResult, register


def _fmt(x: float) -> str:
    return "nan" if np.isnan(x) else f"{x:.3g}"


@register("min_annotators")
def min_annotators(batch: FilterBatch, p: MinAnnotatorsParams) -> FilterResult:
    n = batch.annotation_stats()["n_annotators"]
    keep = n >= p.min_count
    return FilterResult(keep, "too_few_annotators", lambda i: f"annotators={n[i]}<{p.min_count}")


@register("flagged_labels")
def flagged_labels(batch: FilterBatch, p: FlaggedLabelsParams) -> FilterResult:
    """Drop a record when at least ``min_share`` of its annotators gave a flagged label; reason names the label."""
    keep = np.ones(batch.n, dtype=bool)
    reasons: list[str | None] = [None] * batch.n
    details: list[str | None] = [None] * batch.n
    for row, shares in enumerate(batch.label_shares()):
        # The most agreed-on flag names the reason; ties go to the label listed first in the config.
        best = max(((shares.get(lb, 0.0), -i, lb) for i, lb in enumerate(p.labels)), default=(0.0, 0, ""))
        if best[0] >= p.min_share and best[0] > 0:
            keep[row] = False
            reasons[row] = f"flagged:{best[2]}"
            details[row] = f"share={best[0]:.3g}>={p.min_share}"
    return FilterResult(keep, reasons, details)


@register("min_rating")
def min_rating(batch: FilterBatch, p: MinRatingParams) -> FilterResult:
    """Drop records whose mean (or median) rating is below the threshold, or that have no rating at all."""
    agg = batch.annotation_stats()[p.aggregate]
    no_scale = np.zeros(batch.n, dtype=bool)
    if p.scale == "normalized":  # through each record's declared scale (ingest's meta.rating_scale)
        lo, hi = _rating_scales(batch)
        no_scale = np.isnan(lo)
        agg = (agg - lo) / (hi - lo)
    keep = ~np.isnan(agg) & (agg >= p.threshold)
    reasons = np.where(no_scale, "no_rating_scale", np.where(np.isnan(agg), "no_rating", "low_rating")).tolist()
    return FilterResult(keep, reasons, lambda i: f"{p.aggregate}={_fmt(agg[i])}<{p.threshold}")


def _rating_scales(batch: FilterBatch) -> tuple[np.ndarray, np.ndarray]:
    """Per record, the [low, high] rating scale its source declared (NaN where none)."""
    import json

    lo, hi = np.full(batch.n, np.nan), np.full(batch.n, np.nan)
    for i, meta in enumerate(batch.table.column("meta").to_pylist()):
        try:
            scale = json.loads(meta or "{}").get("rating_scale")
        except (ValueError, AttributeError):
            continue
        if isinstance(scale, list) and len(scale) == 2:
            lo[i], hi[i] = scale
    return lo, hi


@register("max_rating_spread")
def max_rating_spread(batch: FilterBatch, p: MaxRatingSpreadParams) -> FilterResult:
    """Drop records whose annotators disagree: max - min rating above ``max_spread``. One rating has spread 0."""
    stats = batch.annotation_stats()
    spread = np.nan_to_num(stats["max"] - stats["min"], nan=0.0)
    keep = spread <= p.max_spread + 1e-9
    return FilterResult(keep, "low_agreement", lambda i: f"spread={_fmt(spread[i])}>{p.max_spread}")


@register("min_label_agreement")
def min_label_agreement(batch: FilterBatch, p: MinLabelAgreementParams) -> FilterResult:
    """Drop records where too few annotators chose the most common label set (majority-label share)."""
    share = batch.majority_label_share()
    n = batch.annotation_stats()["n_annotators"]
    judged = n >= p.min_annotators
    keep = ~judged | (np.nan_to_num(share, nan=1.0) >= p.min_share - 1e-9)
    return FilterResult(keep, "low_label_agreement", lambda i: f"majority_share={_fmt(share[i])}<{p.min_share}")
