"""What every filter builds on: the batch view it reads, the result it returns, and ``register``.

Filters share per-row views (response text, aggregate ratings, label shares) that are costly to build, so a
``FilterBatch`` computes each view once, on first use, from the Arrow columns, and carries the computed views
along when the chain narrows the batch to the rows still alive (``take``).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from schemas.filters import FILTER_PARAMS
from tasks.core.records import record_text

ANON_PREFIX = "\0anon"  # annotations without an annotator id each stand for a person of their own


@dataclass
class FilterResult:
    """What one filter says about each row of a batch: keep it, or drop it for a reason (with a measured value)."""

    keep: np.ndarray
    reasons: Sequence[str | None] | str = "rejected"
    # The measured value behind a drop; a callable is only asked about dropped rows, which saves formatting.
    details: Sequence[str | None] | Callable[[int], str | None] | None = None
    # Rows whose messages the filter rewrote (row -> new [{role, content}]); only PII redaction uses it.
    replace: dict[int, list[dict[str, str]]] = field(default_factory=dict)
    # Counts the filter wants in the report beside the drops (e.g. redactions by kind, hits per eval source).
    stats: Counter = field(default_factory=Counter)

    def reason(self, i: int) -> str:
        return self.reasons if isinstance(self.reasons, str) else (self.reasons[i] or "rejected")

    def detail(self, i: int) -> str | None:
        if self.details is None:
            return None
        return self.details(i) if callable(self.details) else self.details[i]


def _take(values: Any, idx: np.ndarray, n: int) -> Any:
    """The rows ``idx`` (of ``n``) of a per-row view; frames keyed by "row" are renumbered."""
    if isinstance(values, np.ndarray):
        return values[idx]
    if isinstance(values, dict):
        return {k: _take(v, idx, n) for k, v in values.items()}
    if isinstance(values, pd.DataFrame):
        new_row = np.full(n, -1, dtype=np.int64)
        new_row[idx] = np.arange(len(idx))
        mapped = new_row[values["row"].to_numpy()]
        return values[mapped >= 0].assign(row=mapped[mapped >= 0]).reset_index(drop=True)
    return [values[i] for i in idx]


def _list_parents(arr: pa.ChunkedArray | pa.Array) -> tuple[pa.Array, np.ndarray]:
    """Flatten a list column: the child values and, for each, the index of the row it belongs to."""
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    return arr.flatten(), pc.list_parent_indices(arr).to_numpy(zero_copy_only=False).astype(np.int64)


class FilterBatch:
    """Rows of RECORD_SCHEMA plus lazily computed per-row views, shared by all filters of a chain."""

    def __init__(self, table: pa.Table, exclude_annotators: frozenset[str] = frozenset()):
        self.table = table
        self.n = table.num_rows
        self.exclude_annotators = exclude_annotators
        self._views: dict[str, Any] = {}

    def take(self, idx: np.ndarray) -> FilterBatch:
        sub = FilterBatch(self.table.take(pa.array(idx, pa.int64())), self.exclude_annotators)
        sub._views = {k: _take(v, idx, self.n) for k, v in self._views.items()}
        return sub

    def _view(self, name: str, build: Callable[[], Any]) -> Any:
        if name not in self._views:
            self._views[name] = build()
        return self._views[name]

    # --- text -------------------------------------------------------------------------------------------
    def messages(self) -> list[list[tuple[str, str]]]:
        """Per row, its (role, content) pairs; content None becomes ''."""
        def build() -> list[list[tuple[str, str]]]:
            flat, _ = _list_parents(self.table.column("messages"))
            roles = flat.field("role").to_pylist()
            contents = [c or "" for c in flat.field("content").to_pylist()]
            offsets = self.table.column("messages").combine_chunks().offsets.to_numpy()
            pairs = list(zip(roles, contents, strict=True))
            return [pairs[offsets[i]:offsets[i + 1]] for i in range(self.n)]
        return self._view("messages", build)

    def text(self, which: str) -> list[str]:
        """Per row, the named text ``which`` of schemas.record.TEXT_ROLES ('response', 'prompt', 'all', ...)."""
        return self._view(f"text:{which}", lambda: record_text(self.table.column("messages"), which).to_pylist())

    # --- annotations ------------------------------------------------------------------------------------
    def annotations(self) -> pd.DataFrame:
        """One row per annotation: row (index in this batch), annotator, rating (NaN if null), labels."""
        def build() -> pd.DataFrame:
            flat, parent = _list_parents(self.table.column("annotations"))
            ids = flat.field("annotator_id").to_pylist()
            # A missing annotator id still stands for one person: give it a name of its own.
            ids = [a if a is not None else f"{ANON_PREFIX}{i}" for i, a in enumerate(ids)]
            frame = pd.DataFrame({
                "row": parent,
                "annotator": ids,
                "rating": flat.field("rating").to_numpy(zero_copy_only=False).astype(np.float64),
                "labels": [tuple(sorted(set(x or ()))) for x in flat.field("labels").to_pylist()],
            })
            if self.exclude_annotators:
                frame = frame[~frame["annotator"].isin(self.exclude_annotators)]
            # The same annotator twice on one record counts once (their last annotation wins).
            return frame.drop_duplicates(["row", "annotator"], keep="last").reset_index(drop=True)
        return self._view("ann_frame", build)

    def annotation_stats(self) -> dict[str, np.ndarray]:
        """Per row: n_annotators, n_ratings, mean, median, min, max rating (NaN without ratings)."""
        def build() -> dict[str, np.ndarray]:
            frame = self.annotations()
            out = {"n_annotators": np.bincount(frame["row"].to_numpy(), minlength=self.n).astype(np.int64)}
            grouped = frame.groupby("row")["rating"].agg(["count", "mean", "median", "min", "max"])
            for col, name in [("count", "n_ratings"), ("mean", "mean"), ("median", "median"),
                              ("min", "min"), ("max", "max")]:
                full = np.full(self.n, 0 if col == "count" else np.nan, dtype=np.float64)
                full[grouped.index.to_numpy()] = grouped[col].to_numpy(dtype=np.float64)
                out[name] = full
            out["n_ratings"] = out["n_ratings"].astype(np.int64)
            return out
        return self._view("ann_stats", build)

    def label_shares(self) -> list[dict[str, float]]:
        """Per row: label -> share of the row's annotators who gave it."""
        def build() -> list[dict[str, float]]:
            frame = self.annotations()
            n_ann = self.annotation_stats()["n_annotators"]
            shares: list[dict[str, float]] = [{} for _ in range(self.n)]
            for row, labels in zip(frame["row"].to_numpy(), frame["labels"], strict=True):
                for label in labels:
                    shares[row][label] = shares[row].get(label, 0) + 1
            for row, counts in enumerate(shares):
                for label in counts:
                    counts[label] /= n_ann[row]
            return shares
        return self._view("label_shares", build)

    def majority_label_share(self) -> np.ndarray:
        """Per row: the share of annotators whose whole label set equals the most common label set."""
        def build() -> np.ndarray:
            frame = self.annotations()
            n_ann = self.annotation_stats()["n_annotators"]
            out = np.full(self.n, np.nan)
            if len(frame):
                top = frame.groupby(["row", "labels"]).size().groupby(level="row").max()
                out[top.index.to_numpy()] = top.to_numpy() / n_ann[top.index.to_numpy()]
            return out
        return self._view("majority_share", build)


# The filter table: name -> behaviour. Parameter models live in schemas.filters.FILTER_PARAMS (so configs
# validate before any work starts); the behaviour registers here under the same name.
FilterFn = Callable[[FilterBatch, Any], FilterResult]
FILTERS: dict[str, FilterFn] = {}


def register(name: str) -> Callable[[FilterFn], FilterFn]:
    """Decorator: enter a filter's behaviour in FILTERS under its schemas.filters name."""
    if name not in FILTER_PARAMS:
        raise KeyError(f"filter {name!r} has no parameter model in schemas.filters.FILTER_PARAMS")

    def wrap(fn: FilterFn) -> FilterFn:
        FILTERS[name] = fn
        return fn
    return wrap
