"""From verified pairs to clusters and keep decisions: vectorized union-find and the keep rule.

A decision table has one row per record that is in a cluster of two or more: ``idx`` (global row number),
``cluster_id`` (the id of the record the cluster keeps), ``kept_id``, ``is_duplicate``, ``cluster_size``.
Records absent from it are alone in their cluster and kept.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.dedup.text import sorted_unique

DECISION_SCHEMA = pa.schema([
    ("idx", pa.int64()), ("cluster_id", pa.string()), ("kept_id", pa.string()),
    ("is_duplicate", pa.bool_()), ("cluster_size", pa.int64())])


def union_find(left: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Connected components of the edges (left[k], right[k]); returns (nodes, root of each node).

    Vectorized union-find: each round hooks the larger root of every edge under the smaller one, then
    compresses paths by pointer jumping, until no edge joins two roots. Roots are each component's smallest
    node, so the result does not depend on edge order. O(log n) rounds, each a few numpy passes.
    """
    nodes = sorted_unique(np.concatenate([left, right]))
    u, v = np.searchsorted(nodes, left), np.searchsorted(nodes, right)
    parent = np.arange(len(nodes))
    while True:
        ru, rv = parent[u], parent[v]
        differ = ru != rv
        if not differ.any():
            return nodes, nodes[parent]
        lo, hi = np.minimum(ru[differ], rv[differ]), np.maximum(ru[differ], rv[differ])
        np.minimum.at(parent, hi, lo)
        while True:  # pointer jumping until every node points at a root
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped


def keep_order(meta: pa.Table, keep: str) -> list[tuple[str, str]]:
    """Sort keys that put each cluster's kept record first; ``id`` breaks every tie."""
    rule = {"best_rated": [("score", "descending")], "longest": [("length", "descending")],
            "first": [("idx", "ascending")]}[keep]
    return [("root", "ascending"), *rule, ("id", "ascending")]


def decide(meta: pa.Table, keep: str) -> pa.Table:
    """Decisions for records with a cluster label in column ``root`` (meta: idx, id, score, length, root)."""
    if meta.num_rows == 0:
        return DECISION_SCHEMA.empty_table()
    meta = meta.sort_by(keep_order(meta, keep))
    root = meta.column("root").to_numpy()
    first = np.concatenate([[True], root[1:] != root[:-1]])
    start = np.flatnonzero(first)
    group = np.cumsum(first) - 1
    sizes = np.diff(np.concatenate([start, [len(root)]]))
    ids = meta.column("id").combine_chunks()
    kept_id = ids.take(pa.array(start[group]))
    table = pa.table({
        "idx": meta.column("idx"), "cluster_id": kept_id, "kept_id": kept_id,
        "is_duplicate": pa.array(~first), "cluster_size": pa.array(sizes[group].astype(np.int64))},
        schema=DECISION_SCHEMA)
    return table.sort_by("idx")


def exact_decisions(keys: pa.Table, keep: str) -> pa.Table:
    """Decisions for one partition of exact keys (k1, k2, idx, id, score, length): equal keys form a cluster."""
    if keys.num_rows == 0:
        return DECISION_SCHEMA.empty_table()
    k1, k2 = keys.column("k1").to_numpy(), keys.column("k2").to_numpy()
    order = np.lexsort((k2, k1))
    k1, k2 = k1[order], k2[order]
    new = np.concatenate([[True], (k1[1:] != k1[:-1]) | (k2[1:] != k2[:-1])])
    label = np.cumsum(new) - 1
    size = np.bincount(label)
    in_cluster = size[label] > 1
    meta = keys.take(pa.array(order[in_cluster])).append_column("root", pa.array(label[in_cluster]))
    return decide(meta.select(["idx", "id", "score", "length", "root"]), keep)


# Small row groups: each unit reads only its rows' decisions, pruned by the row groups' idx statistics.
DECISION_ROW_GROUP = 65_536


def write_decisions(table: pa.Table, path: Path) -> None:
    """Write a decision table, which must already be sorted by idx (``decide`` and ``exact_decisions`` return
    it so), in small row groups, so ``read_decisions`` can prune by the idx statistics."""
    pq.write_table(table, path, row_group_size=DECISION_ROW_GROUP)


def read_decisions(path: Path, start: int, stop: int) -> pa.Table:
    """The decisions of global rows [start, stop), from a decisions file sorted by idx."""
    if not path.exists():
        return DECISION_SCHEMA.empty_table()
    table = pq.read_table(path, filters=[("idx", ">=", start), ("idx", "<", stop)])
    return table.cast(DECISION_SCHEMA)


def cluster_sizes(decisions: pa.Table) -> dict[int, int]:
    """Histogram {cluster size: number of clusters} over clusters of two or more."""
    if decisions.num_rows == 0:
        return {}
    kept = decisions.filter(pc.invert(decisions.column("is_duplicate")))
    sizes, counts = np.unique(kept.column("cluster_size").to_numpy(), return_counts=True)
    return {int(s): int(c) for s, c in zip(sizes, counts, strict=True)}
