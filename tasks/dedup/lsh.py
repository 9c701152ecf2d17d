"""Out-of-core near-duplicate search: three named steps mapped over shards, then clustering (as datatrove
names them):

1. ``sketch_unit``: per unit of input rows, shingle hashes and MinHash signatures; writes the LSH band keys,
   partitioned by key, the raw shingle hashes (for exact Jaccard) and a small meta table, all to disk.
2. ``bucket_partition``: per key partition, one numpy sort of the band keys; docs sharing a key become
   candidate pairs, written per verify block.
3. ``verify_block``: per block of units, the exact Jaccard of each candidate pair; pairs at or above the
   threshold become edges.
4. clustering, in one process (``tasks.dedup.steps.near_decisions`` calls ``tasks.dedup.cluster.decide``):
   connected components (union-find) over the edges, then the keep rule per cluster.

Memory: a unit holds ``unit_rows`` docs; a partition holds ~N*bands/partitions keys; a verify block holds the
shingles of two unit groups. Partitions and groups are sized from ``DedupConfig.memory_mb``, so peak memory
follows the configuration, not the corpus.
"""
from __future__ import annotations

import errno
import math
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from schemas.dedup import DedupConfig
from tasks.core.records import record_text
from tasks.dedup.minhash import (
    band_keys,
    choose_bands_rows,
    jaccard_pairs,
    permutations,
    signature_jaccard,
    signatures,
)
from tasks.dedup.text import Shingles, fmix64, normalize, shingle_hashes, sorted_unique

Mapper = Callable[[Callable[..., Any], list], list]
# Buckets up to this size give all their pairs; larger ones (templates copied many times) a star plus a chain,
# which connects the same component with k-1 verified edges instead of k^2/2.
ALL_PAIRS_MAX = 16
_KEY_BYTES = 8 + 8  # uint64 band key + int64 doc index


def serial_map(fn: Callable[..., Any], items: list) -> list:
    return [fn(item) for item in items]


@dataclass(frozen=True)
class Unit:
    """At most ``unit_rows`` consecutive input rows: whole row groups, or one slice of a row group larger than
    that (``offset`` rows into it). ``start`` is the global index of its first row."""

    index: int
    path: str
    row_groups: tuple[int, ...]
    start: int
    rows: int
    offset: int = 0
    sliced: bool = False  # a slice of a larger row group, read by streaming (iter_unit_tables)


def plan_units(paths: list[Path], unit_rows: int) -> list[Unit]:
    """Cut shards into units of at most ``unit_rows`` rows: small row groups are joined, large ones sliced,
    so the memory of one unit's work follows the configuration, not how the input was written (pyarrow's
    default row group holds a million rows)."""
    units: list[Unit] = []
    start = 0

    def add(path: Path, groups: tuple[int, ...], rows: int, offset: int = 0, sliced: bool = False) -> None:
        nonlocal start
        units.append(Unit(len(units), str(path), groups, start, rows, offset, sliced))
        start += rows

    for path in paths:
        meta = pq.ParquetFile(path).metadata
        groups: list[int] = []
        rows = 0
        for g in range(meta.num_row_groups):
            n = meta.row_group(g).num_rows
            if groups and rows + n > unit_rows:
                add(path, tuple(groups), rows)
                groups, rows = [], 0
            if n > unit_rows:
                for offset in range(0, n, unit_rows):
                    add(path, (g,), min(unit_rows, n - offset), offset, sliced=True)
                continue
            groups.append(g)
            rows += n
        if rows:
            add(path, tuple(groups), rows)
    return units


def plan_spans(units: list[Unit], workers: int) -> list[list[Unit]]:
    """Work items for the steps that read the input: one unit each, except that the slices of one large row
    group go together (up to an even share of the work per worker), so the group is decoded once per span."""
    share = max(1, math.ceil(len(units) / (2 * max(workers, 1))))
    spans: list[list[Unit]] = []
    for unit in units:
        last = spans[-1][-1] if spans else None
        if (unit.sliced and unit.offset > 0 and last is not None and last.path == unit.path
                and last.row_groups == unit.row_groups and len(spans[-1]) < share):
            spans[-1].append(unit)
        else:
            spans.append([unit])
    return spans


class _SliceReader:
    """Streams one row group in batches and hands out consecutive row slices of it."""

    def __init__(self, unit: Unit, columns: list[str] | None) -> None:
        self.key = (unit.path, unit.row_groups)
        self.batches = pq.ParquetFile(unit.path, buffer_size=1 << 20).iter_batches(
            batch_size=unit.rows, row_groups=list(unit.row_groups), columns=columns, use_threads=False)
        self.pos = 0  # row-group row of the first row of ``pending``
        self.pending: pa.RecordBatch | None = None

    def take(self, offset: int, rows: int) -> pa.Table:
        out = []
        while rows > 0:
            if self.pending is None:
                self.pending = next(self.batches)
            batch = self.pending
            lo = offset - self.pos
            if lo >= batch.num_rows:  # rows before the slice: skip the batch
                self.pos += batch.num_rows
                self.pending = None
                continue
            n = min(batch.num_rows - lo, rows)
            out.append(batch.slice(lo, n))
            offset, rows = offset + n, rows - n
            self.pending = batch.slice(lo + n) if lo + n < batch.num_rows else None
            self.pos = offset
        return pa.Table.from_batches(out)


def iter_unit_tables(span: list[Unit], columns: list[str] | None = None) -> Iterator[tuple[Unit, pa.Table]]:
    """Each unit of a span with its rows, in order; slices of one row group share one streaming read."""
    reader: _SliceReader | None = None
    for unit in span:
        if not unit.sliced:
            yield unit, pq.ParquetFile(unit.path).read_row_groups(list(unit.row_groups), columns=columns)
            continue
        if reader is None or reader.key != (unit.path, unit.row_groups) or reader.pos > unit.offset:
            reader = _SliceReader(unit, columns)
        yield unit, reader.take(unit.offset, unit.rows)


@dataclass(frozen=True)
class Plan:
    """Everything a worker needs, picklable: the config and where the shared work files live."""

    cfg: DedupConfig
    work: str
    bands: int
    rows: int
    partitions: int
    perms: tuple[np.ndarray, np.ndarray]  # datasketch's (a, b) for the first bands*rows permutations
    text_field: str | None = None  # None: records (compare cfg.text of messages); else a plain text column
    id_field: str | None = "id"  # None: ids are the global row numbers, as strings

    @property
    def root(self) -> Path:
        return Path(self.work)


def make_plan(cfg: DedupConfig, work: Path, n_docs: int, text_field: str | None = None,
              id_field: str | None = "id") -> Plan:
    bands, rows = (cfg.bands, cfg.rows) if cfg.bands and cfg.rows else \
        choose_bands_rows(cfg.threshold, cfg.num_perm, cfg.target_recall)
    # grouping one partition peaks near 40 bytes per (doc, band) key, input included (bench/dedup/banding.py);
    # 64 per key (the 16 raw bytes x 4) keeps it within the budget with room for the reads.
    partitions = cfg.partitions or max(1, math.ceil(n_docs * bands * _KEY_BYTES * 4 / (cfg.memory_mb * 2**20)))
    a, b = permutations(cfg.num_perm, cfg.seed)
    return Plan(cfg, str(work), bands, rows, partitions, (a[:bands * rows], b[:bands * rows]), text_field,
                id_field)


def read_unit(unit: Unit, columns: list[str] | None = None) -> pa.Table:
    return next(iter_unit_tables([unit], columns))[1]


def run_span(span: list[Unit], step: Callable[..., Any], columns: list[str] | None = None, **kwargs: Any) -> list:
    """Apply a per-unit ``step(unit, table, **kwargs)`` to each unit of a span (one mapped work item)."""
    return [step(unit, table, **kwargs) for unit, table in iter_unit_tables(span, columns)]


def unit_texts(table: pa.Table, plan: Plan) -> pa.Array:
    """The compared text of each row: chosen turns of a record, or a plain text column."""
    if plan.text_field is None:
        return record_text(table.column("messages"), plan.cfg.text)
    col = table.column(plan.text_field).combine_chunks()
    if col.type != pa.string():
        col = col.cast(pa.string())
    return pc.fill_null(col, "") if col.null_count else col


def unit_ids(table: pa.Table, unit: Unit, plan: Plan) -> pa.Array:
    """Record ids as strings; row numbers when the input has no id field."""
    if plan.id_field is None:
        return pa.array(np.arange(unit.start, unit.start + unit.rows).astype(str), pa.string())
    return table.column(plan.id_field).combine_chunks().cast(pa.string())


def unit_scores(table: pa.Table) -> np.ndarray:
    """Mean annotator rating per record; no rating at all ranks lowest (-inf)."""
    if "annotations" not in table.column_names:
        return np.full(table.num_rows, -np.inf)
    ann = table.column("annotations").combine_chunks()
    ratings = pc.list_flatten(ann).field("rating")
    parents = pc.list_parent_indices(ann).to_numpy()
    valid = pc.is_valid(ratings).to_numpy(zero_copy_only=False)
    values = pc.fill_null(ratings, 0.0).to_numpy(zero_copy_only=False)
    total = np.bincount(parents[valid], weights=values[valid], minlength=table.num_rows)
    count = np.bincount(parents[valid], minlength=table.num_rows)
    return np.where(count > 0, total / np.maximum(count, 1), -np.inf)


def sketch_unit(unit: Unit, table: pa.Table, plan: Plan) -> dict[str, int]:
    """Signatures of one unit's rows, written to disk: band keys per partition, shingles, meta."""
    cfg, root = plan.cfg, plan.root
    texts = unit_texts(table, plan)
    norm = normalize(texts, cfg.lowercase, cfg.strip_punct, cfg.nfkc)
    sh = shingle_hashes(norm, cfg.shingle, cfg.ngram)
    counts = np.diff(sh.offsets)
    idx = np.arange(unit.start, unit.start + unit.rows, dtype=np.int64)
    pq.write_table(pa.table({
        "idx": idx, "id": unit_ids(table, unit, plan),
        "score": unit_scores(table), "length": pc.utf8_length(texts).cast(pa.int64()),
        "n_shingles": counts}), root / "meta" / f"u{unit.index:06d}.parquet")
    np.save(root / "shingles" / f"u{unit.index:06d}.hashes.npy", sh.hashes)
    np.save(root / "shingles" / f"u{unit.index:06d}.offsets.npy", sh.offsets)
    has = counts > 0  # a doc without shingles (empty text) is nobody's near-duplicate
    sig = signatures(sh, plan.perms)
    if cfg.verify == "signature":
        np.save(root / "shingles" / f"u{unit.index:06d}.sig.npy", sig)
    keys = band_keys(sig[has], plan.bands, plan.rows).ravel()
    doc = np.repeat(idx[has], plan.bands)
    part = (keys % np.uint64(plan.partitions)).astype(np.int64)
    order = np.argsort(part, kind="stable")
    # One file of (key, doc) rows ordered by partition plus the partition bounds: two files per unit whatever
    # the number of partitions (a file per unit and partition grows with the square of the corpus).
    stem = root / "bands" / f"u{unit.index:06d}"
    np.save(f"{stem}.keys.npy", np.stack([keys[order], doc[order].astype(np.uint64)], axis=1))
    np.save(f"{stem}.bounds.npy", np.searchsorted(part[order], np.arange(plan.partitions + 1)))
    return {"docs": unit.rows, "empty": int((~has).sum()), "shingles": int(counts.sum())}


def bucket_members(keys: np.ndarray, docs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Group docs by band key with one sort: the docs of every bucket holding 2+ docs, bucket after bucket,
    and each such bucket's size. Peak: ~23 bytes per key beyond the 16 of the (key, doc) input, against ~78
    for pyarrow's hash group-by with list aggregation, at 25% less CPU (bench/dedup/banding.py)."""
    order = np.argsort(keys)
    keys = keys[order]
    same = keys[1:] == keys[:-1]
    shared = np.zeros(len(keys), dtype=bool)
    shared[1:] |= same
    shared[:-1] |= same
    members, keys = docs[order[shared]], keys[shared]
    starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
    return members, np.diff(np.concatenate([starts, [len(keys)]]))


def bucket_pairs(flat: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Candidate pairs (i < j), as an (n, 2) int64 array, from buckets of 2+ docs given as concatenated
    members ``flat`` and bucket ``sizes``."""
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    out = []
    for size in np.unique(sizes):
        rows = starts[sizes == size][:, None] + np.arange(size)[None, :]
        grid = flat[rows]
        if size <= ALL_PAIRS_MAX:
            a, b = np.triu_indices(int(size), 1)
            out.append(np.stack([grid[:, a].ravel(), grid[:, b].ravel()], axis=1))
        else:
            grid = np.sort(grid, axis=1)
            star = np.stack([np.repeat(grid[:, 0], size - 1), grid[:, 1:].ravel()], axis=1)
            chain = np.stack([grid[:, 1:-1].ravel(), grid[:, 2:].ravel()], axis=1)
            out += [star, chain]
    if not out:
        return np.zeros((0, 2), np.int64)
    pairs = np.concatenate(out)
    return np.stack([pairs.min(axis=1), pairs.max(axis=1)], axis=1)


def bucket_partition(partition: int, plan: Plan, group_starts: np.ndarray, splits: int = 1) -> int:
    """Group one partition's band keys; write its distinct candidate pairs split by verify block."""
    root = plan.root
    parts = []
    for stem in sorted(p.name[:-len(".keys.npy")] for p in (root / "bands").glob("u*.keys.npy")):
        lo, hi = np.load(root / "bands" / f"{stem}.bounds.npy")[partition:partition + 2]
        if hi > lo:
            parts.append(np.array(np.load(root / "bands" / f"{stem}.keys.npy", mmap_mode="r")[lo:hi]))
    if not parts:
        return 0
    rows = np.concatenate(parts)
    del parts
    keys, docs = rows[:, 0].copy(), rows[:, 1].astype(np.int64)
    del rows
    members, sizes = bucket_members(keys, docs)
    del keys, docs
    pairs = bucket_pairs(members, sizes)
    if not len(pairs):
        return 0
    pairs = sorted_unique(pairs[:, 0] * np.int64(1 << 32) + pairs[:, 1])  # the same pair shows up in many bands
    left, right = pairs >> 32, pairs & 0xFFFFFFFF
    gl, gr = np.searchsorted(group_starts, left, "right") - 1, np.searchsorted(group_starts, right, "right") - 1
    # the split follows the pair, so a pair found in several partitions lands in one verify item, checked once
    split = (fmix64(pairs.astype(np.uint64)) % np.uint64(splits)).astype(np.int64) if splits > 1 else \
        np.zeros(len(pairs), np.int64)
    for a, b, s in set(zip(gl.tolist(), gr.tolist(), split.tolist(), strict=True)):
        sel = (gl == a) & (gr == b) & (split == s)
        out = root / "pairs" / f"g{a:04d}-{b:04d}"
        out.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"i": left[sel], "j": right[sel]}), out / f"p{partition:04d}-s{s:03d}.parquet")
    return len(pairs)


def _load_shingles(plan: Plan, units: list[Unit], docs: np.ndarray) -> tuple[Shingles, np.ndarray]:
    """Gather the shingles of the given global doc indices (sorted) from the units' files; returns the
    compact Shingles and the doc indices in its order."""
    hashes, sizes, order = [], [], []
    for unit in units:
        sel = docs[(docs >= unit.start) & (docs < unit.start + unit.rows)]
        if not len(sel):
            continue
        stem = plan.root / "shingles" / f"u{unit.index:06d}"
        offsets = np.load(f"{stem}.offsets.npy")
        flat = np.load(f"{stem}.hashes.npy", mmap_mode="r")
        local = sel - unit.start
        lo, hi = offsets[local], offsets[local + 1]
        n = hi - lo
        take = np.repeat(lo, n) + (np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n))
        hashes.append(np.asarray(flat[take]))
        sizes.append(n)
        order.append(sel)
    if not order:
        return Shingles(np.zeros(0, np.uint32), np.zeros(1, np.int64)), np.zeros(0, np.int64)
    size = np.concatenate(sizes)
    return (Shingles(np.concatenate(hashes), np.concatenate([[0], np.cumsum(size)]).astype(np.int64)),
            np.concatenate(order))


def _load_signatures(plan: Plan, units: list[Unit], docs: np.ndarray) -> np.ndarray:
    parts = []
    for unit in units:
        sel = docs[(docs >= unit.start) & (docs < unit.start + unit.rows)]
        if len(sel):
            sig = np.load(plan.root / "shingles" / f"u{unit.index:06d}.sig.npy", mmap_mode="r")
            parts.append(np.asarray(sig[sel - unit.start]))
    return np.concatenate(parts) if parts else np.zeros((0, plan.bands * plan.rows), np.uint32)


# Bytes the exact-Jaccard check of one pair takes per shingle of each side (tagged uint64 sets and their sorts).
_VERIFY_BYTES_PER_SHINGLE = 2 * 64


def verify_chunk(plan: Plan, mean_shingles: float) -> int:
    """Pairs checked at once: half the memory budget (the loaded shingles take the other half)."""
    per_pair = _VERIFY_BYTES_PER_SHINGLE * max(mean_shingles, 1.0)
    return max(256, int(plan.cfg.memory_mb * 2**20 // 2 // per_pair))


def verify_block(item: tuple[str, str], plan: Plan, units: list[Unit]) -> dict[str, int]:
    """Check each candidate pair of one (block, split); keep those with Jaccard >= threshold as edges."""
    root = plan.root
    block, split = item
    paths = sorted((root / "pairs" / block).glob(f"*-s{split}.parquet"))
    pairs = pa.concat_tables([pq.read_table(p) for p in paths])
    # distinct pairs: one pair shares keys in several bands, and the bands may sit in different partitions
    key = sorted_unique(pairs.column("i").to_numpy() * np.int64(1 << 32) + pairs.column("j").to_numpy())
    left, right = key >> 32, key & 0xFFFFFFFF
    docs = sorted_unique(np.concatenate([left, right]))
    chunk = len(left) or 1
    if plan.cfg.verify == "jaccard":
        sh, order = _load_shingles(plan, units, docs)
        chunk = verify_chunk(plan, len(sh.hashes) / max(len(docs), 1))
    elif plan.cfg.verify == "signature":
        sig = _load_signatures(plan, units, docs)
    keep_l, keep_r, keep_j = [], [], []
    for lo in range(0, len(left), chunk):
        li, ri = np.searchsorted(docs, left[lo:lo + chunk]), np.searchsorted(docs, right[lo:lo + chunk])
        if plan.cfg.verify == "jaccard":
            sim = jaccard_pairs(sh, li, ri)
        elif plan.cfg.verify == "signature":
            sim = signature_jaccard(sig[li], sig[ri])
        else:
            sim = np.ones(len(li))
        ok = sim >= plan.cfg.threshold
        keep_l.append(left[lo:lo + chunk][ok])
        keep_r.append(right[lo:lo + chunk][ok])
        keep_j.append(sim[ok])
    pq.write_table(pa.table({"i": np.concatenate(keep_l), "j": np.concatenate(keep_r),
                             "jaccard": np.concatenate(keep_j)}), root / "edges" / f"{block}-s{split}.parquet")
    return {"candidates": len(left), "edges": int(sum(len(x) for x in keep_l))}


def group_budget(plan: Plan) -> int:
    """Bytes of shingle files one unit group may hold: a verify block loads two groups."""
    return plan.cfg.memory_mb * 2**20 // 4


def group_units(plan: Plan, units: list[Unit]) -> list[list[Unit]]:
    """Consecutive units whose shingle files together fit a quarter of the budget (two groups per block)."""
    budget = group_budget(plan)
    groups: list[list[Unit]] = [[]]
    used = 0
    for unit in units:
        size = (plan.root / "shingles" / f"u{unit.index:06d}.hashes.npy").stat().st_size
        if groups[-1] and used + size > budget:
            groups.append([])
            used = 0
        groups[-1].append(unit)
        used += size
    return groups


# Shingle-hash bytes per byte of input text: a 4-byte hash per word (~6 bytes with its space), or per character.
_SHINGLE_BYTES_PER_TEXT_BYTE = {"word": 0.7, "char": 4.0}


def work_bytes(plan: Plan, paths: list[Path], n_docs: int) -> int:
    """Disk the work directory takes at its fullest (band keys, shingle hashes, meta), estimated from the
    inputs' Parquet metadata: uncompressed bytes of all columns stand in for the compared text."""
    text = 0
    for path in paths:  # one footer read per file
        meta = pq.ParquetFile(path).metadata
        text += sum(meta.row_group(g).total_byte_size for g in range(meta.num_row_groups))
    return int(n_docs * (plan.bands * _KEY_BYTES + 64) + text * _SHINGLE_BYTES_PER_TEXT_BYTE[plan.cfg.shingle])


def check_work_space(work: Path, need: int) -> None:
    """Fail before any work, not hours in, when the work directory's disk cannot hold the estimate."""
    work.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(work.parent).free
    if free < need:
        raise OSError(errno.ENOSPC, f"near dedup needs about {need / 2**20:,.0f} MiB of work space in {work.parent} "
                                    f"and {free / 2**20:,.0f} MiB are free")


def prepare_workdir(work: Path, partitions: int) -> None:
    shutil.rmtree(work, ignore_errors=True)
    for sub in ("meta", "shingles", "edges", "pairs"):
        (work / sub).mkdir(parents=True)
    for p in range(partitions):
        (work / "bands" / f"p{p:04d}").mkdir(parents=True)
