"""The steps of exact and near dedup over a shard directory, and the mappers that run them in parallel.

No Prefect import here: process-pool workers import this module (and tasks.dedup.lsh), and should start fast.
``dedup_dir`` is the one entry point; tasks.dedup.stage wraps it as pipeline stages, flows.cli_dedup as a command.
"""
from __future__ import annotations

import atexit
import functools
import logging
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from schemas.dedup import DedupConfig
from schemas.record import RECORD_SCHEMA, REJECT_SCHEMA
from tasks.core.stage import ShardWriter, shard_paths, with_reject_columns
from tasks.dedup.cluster import (
    DECISION_SCHEMA,
    cluster_sizes,
    decide,
    exact_decisions,
    read_decisions,
    union_find,
    write_decisions,
)
from tasks.dedup.lsh import (
    Mapper,
    Plan,
    Unit,
    bucket_partition,
    check_work_space,
    group_units,
    make_plan,
    plan_spans,
    plan_units,
    prepare_workdir,
    run_span,
    serial_map,
    sketch_unit,
    unit_ids,
    unit_scores,
    unit_texts,
    verify_block,
    work_bytes,
)
from tasks.dedup.text import exact_keys, normalize

EXACT, NEAR = "exact_dedup", "near_dedup"
REASONS = {EXACT: "exact_duplicate", NEAR: "near_duplicate"}
DEDUP_REJECT_SCHEMA = pa.schema(list(REJECT_SCHEMA) + [pa.field("cluster_id", pa.string()),
                                                        pa.field("kept_id", pa.string())])
MAP_SCHEMA = pa.schema([("id", pa.string()), ("cluster_id", pa.string()), ("is_duplicate", pa.bool_()),
                        ("kept", pa.bool_()), ("cluster_size", pa.int64())])

_POOLS: dict[int, ProcessPoolExecutor] = {}
_log = logging.getLogger(__name__)


class _Steps:
    """Logs the time of each step at DEBUG: where a long run spends its time, without a profiler."""

    def __init__(self) -> None:
        self.last = time.perf_counter()

    def done(self, step: str, **counts: int) -> None:
        now = time.perf_counter()
        _log.debug("dedup step %s: %.1fs %s", step, now - self.last, counts)
        self.last = now


def _pool(workers: int) -> ProcessPoolExecutor:
    """One pool per worker count, reused across steps and stages: workers start once per process."""
    if workers not in _POOLS:
        # fork starts workers in milliseconds, but is unsafe once threads run (Prefect's and MLflow's do);
        # then forkserver, with this module preloaded.
        if threading.active_count() == 1:
            ctx = get_context("fork")
        else:
            ctx = get_context("forkserver")
            ctx.set_forkserver_preload(["tasks.dedup.steps"])
        _POOLS[workers] = ProcessPoolExecutor(workers, mp_context=ctx)
        atexit.register(_POOLS[workers].shutdown)
    return _POOLS[workers]


def process_map(workers: int) -> Mapper:
    """A Mapper over a local process pool, or serial for one worker."""
    if workers <= 1:
        return serial_map

    def run(fn: Callable[..., Any], items: list) -> list:
        return serial_map(fn, items) if len(items) <= 1 else list(_pool(workers).map(fn, items))
    return run


# ---------------------------------------------------------------------------------------------- near dedup

def map_units(mapper: Mapper, step: Callable[..., Any], units: list[Unit], workers: int,
              columns: list[str] | None = None, **kwargs: Any) -> list:
    """Map a per-unit step over the units, as spans (see plan_spans); one result per unit, in order."""
    spans = plan_spans(units, workers)
    return [r for rs in mapper(functools.partial(run_span, step=step, columns=columns, **kwargs), spans) for r in rs]


def near_decisions(units: list[Unit], plan: Plan, mapper: Mapper) -> tuple[Path, dict]:
    """Steps 1-4 of near dedup over the units; writes ``work/decisions.parquet`` and returns it with stats."""
    root = plan.root
    steps = _Steps()
    sketch = map_units(mapper, sketch_unit, units, plan.cfg.workers, plan=plan)
    steps.done("sketch", units=len(units))
    groups = group_units(plan, units)
    group_starts = np.array([g[0].start for g in groups], dtype=np.int64)
    # verify items per block: one per worker, so a single large block still uses every worker
    found = sum(mapper(functools.partial(bucket_partition, plan=plan, group_starts=group_starts,
                                         splits=max(plan.cfg.workers, 1)), list(range(plan.partitions))))
    steps.done("bucket", partitions=plan.partitions, pairs_per_partition=int(found))
    items = sorted({(d.name, p.stem.split("-s")[-1]) for d in (root / "pairs").iterdir()
                    for p in d.glob("*.parquet")})
    verified = mapper(functools.partial(verify_block, plan=plan, units=units), items)
    steps.done("verify", blocks=len(items))
    edges = [p for p in sorted((root / "edges").glob("*.parquet"))]
    edge_table = pa.concat_tables([pq.read_table(p) for p in edges]) if edges else None
    stats = {"docs": sum(s["docs"] for s in sketch), "empty_docs": sum(s["empty"] for s in sketch),
             "bands": plan.bands, "rows": plan.rows, "partitions": plan.partitions, "verify_blocks": len(items),
             "candidate_pairs": sum(v["candidates"] for v in verified),
             "edges": sum(v["edges"] for v in verified)}
    out = root / "decisions.parquet"
    if edge_table is None or edge_table.num_rows == 0:
        write_decisions(DECISION_SCHEMA.empty_table(), out)
        return out, stats
    nodes, roots = union_find(edge_table.column("i").to_numpy(), edge_table.column("j").to_numpy())
    metas = []
    for unit in units:
        sel = (nodes >= unit.start) & (nodes < unit.start + unit.rows)
        if sel.any():
            meta = pq.read_table(root / "meta" / f"u{unit.index:06d}.parquet",
                                 columns=["idx", "id", "score", "length"])
            metas.append(meta.take(pa.array(nodes[sel] - unit.start)).append_column("root", pa.array(roots[sel])))
    write_decisions(decide(pa.concat_tables(metas), plan.cfg.keep), out)
    steps.done("cluster", edges=stats["edges"])
    return out, stats


# ---------------------------------------------------------------------------------------------- exact dedup

def exact_unit(unit: Unit, table: pa.Table, plan: Plan) -> int:
    """Content keys of one unit, partitioned by key so each partition groups alone."""
    texts = unit_texts(table, plan)
    keys = exact_keys(normalize(texts, plan.cfg.lowercase, plan.cfg.strip_punct, plan.cfg.nfkc))
    part = (keys[:, 1] % np.uint64(plan.partitions)).astype(np.int64)
    data = pa.table({"k1": keys[:, 0], "k2": keys[:, 1],
                     "idx": np.arange(unit.start, unit.start + unit.rows, dtype=np.int64),
                     "id": unit_ids(table, unit, plan), "score": unit_scores(table),
                     "length": pc.utf8_length(texts).cast(pa.int64())})
    for p in range(plan.partitions):
        pq.write_table(data.filter(pa.array(part == p)), plan.root / "bands" / f"p{p:04d}" /
                       f"u{unit.index:06d}.parquet")
    return unit.rows


def exact_partition(partition: int, plan: Plan) -> pa.Table:
    paths = sorted((plan.root / "bands" / f"p{partition:04d}").glob("*.parquet"))
    return exact_decisions(pa.concat_tables([pq.read_table(p) for p in paths]), plan.cfg.keep)


def exact_decisions_all(units: list[Unit], plan: Plan, mapper: Mapper) -> tuple[Path, dict]:
    map_units(mapper, exact_unit, units, plan.cfg.workers, plan=plan)
    parts = mapper(functools.partial(exact_partition, plan=plan), list(range(plan.partitions)))
    out = plan.root / "decisions.parquet"
    write_decisions(pa.concat_tables(parts).sort_by("idx"), out)
    return out, {"docs": sum(u.rows for u in units), "partitions": plan.partitions}


# ---------------------------------------------------------------------------------------------- outputs

def write_unit(unit: Unit, table: pa.Table, plan: Plan, decisions: str, out: str,
               stage: str | None) -> dict[str, int]:
    """Apply the decisions to one unit: map part always; kept rows and rejects when ``stage`` is given."""
    out_dir = Path(out)
    dec = read_decisions(Path(decisions), unit.start, unit.start + unit.rows)
    ids = unit_ids(table, unit, plan)
    pos = dec.column("idx").to_numpy() - unit.start
    cluster = np.array(ids.to_pylist(), dtype=object)
    cluster[pos] = dec.column("cluster_id").to_pylist()
    dup = np.zeros(unit.rows, dtype=bool)
    dup[pos] = dec.column("is_duplicate").to_numpy(zero_copy_only=False)
    size = np.ones(unit.rows, dtype=np.int64)
    size[pos] = dec.column("cluster_size").to_numpy()
    pq.write_table(pa.table({"id": ids, "cluster_id": pa.array(cluster, pa.string()), "is_duplicate": dup,
                             "kept": ~dup, "cluster_size": size}, schema=MAP_SCHEMA),
                   out_dir / "map_parts" / f"u{unit.index:06d}.parquet")
    if stage is None:
        return {"rows": unit.rows, "dropped": int(dup.sum())}
    prefix = f"u{unit.index:06d}"
    with ShardWriter(out_dir / "data", table.schema, prefix=prefix) as kept:
        kept.write(table.filter(pa.array(~dup)))
    rejected = table.filter(pa.array(dup))
    kept_of = pa.array(cluster[dup], pa.string())
    details = [f"cluster of {s}, kept {k}" for s, k in zip(size[dup].tolist(), kept_of.to_pylist(), strict=True)]
    rejected = with_reject_columns(rejected, stage, REASONS[stage], details)
    with ShardWriter(out_dir / "rejects", DEDUP_REJECT_SCHEMA, prefix=prefix) as rej:
        rej.write(rejected.append_column("cluster_id", kept_of).append_column("kept_id", kept_of))
    return {"rows": unit.rows, "dropped": int(dup.sum())}


def merge_map(out: Path, target: Path) -> int:
    """Concatenate the per-unit map parts, in input order, into one Parquet file."""
    parts = sorted((out / "map_parts").glob("*.parquet"))
    rows = 0
    partial = target.with_name(f".{target.name}.partial")  # the map appears whole or not at all
    try:
        with pq.ParquetWriter(partial, MAP_SCHEMA) as writer:
            for part in parts:
                table = pq.read_table(part)
                writer.write_table(table)
                rows += table.num_rows
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    for part in parts:
        part.unlink()
    (out / "map_parts").rmdir()
    return rows


def unit_rows_for(paths: list[Path], cfg: DedupConfig) -> int:
    """``unit_rows``, or fewer on a small input, so that every worker gets a few units to balance."""
    if cfg.workers <= 1:
        return cfg.unit_rows
    total = sum(pq.ParquetFile(p).metadata.num_rows for p in paths)
    return max(100, min(cfg.unit_rows, -(-total // (4 * cfg.workers))))


def dedup_dir(inputs: Path | list[Path], cfg: DedupConfig, out: Path, stage: str | None, kind: str,
              text_field: str | None = None, id_field: str | None = "id", mapper: Mapper | None = None,
              map_path: Path | None = None, report: bool = True) -> dict[str, Any]:
    """Run exact or near dedup over Parquet shards; writes the map, the report, and for a ``stage`` the kept
    rows (out/data) and rejects (out/rejects).

    ``inputs`` is a shard directory or a list of Parquet files. Returns the stats (the ledger's extra): counts,
    LSH shape, cluster histogram.
    """
    out.mkdir(parents=True, exist_ok=True)
    (out / "map_parts").mkdir(exist_ok=True)
    mapper = mapper or process_map(cfg.workers)
    paths = shard_paths(inputs) if isinstance(inputs, (str, Path)) else [Path(p) for p in inputs]
    units = plan_units(paths, unit_rows_for(paths, cfg))
    n_docs = sum(u.rows for u in units)
    work = out / "_work"
    plan = make_plan(cfg, work, n_docs, text_field, id_field)
    if kind == "near":
        check_work_space(work, work_bytes(plan, paths, n_docs))
    prepare_workdir(work, plan.partitions)
    if not units:  # no rows at all (everything upstream quarantined or filtered): empty outputs, not a crash
        decisions = work / "decisions.parquet"
        stats = {"docs": 0, **({"bands": plan.bands, "rows": plan.rows} if kind == "near" else {})}
        write_decisions(DECISION_SCHEMA.empty_table(), decisions)
        if stage:
            ShardWriter(out / "data", pq.read_schema(paths[0]) if paths else RECORD_SCHEMA).close()
            ShardWriter(out / "rejects", DEDUP_REJECT_SCHEMA).close()
    elif kind == "near":
        decisions, stats = near_decisions(units, plan, mapper)
    else:
        decisions, stats = exact_decisions_all(units, plan, mapper)
    steps = _Steps()
    columns = None if stage else [plan.id_field] if plan.id_field else []  # the map needs only the ids
    results = map_units(mapper, write_unit, units, cfg.workers, columns, plan=plan, decisions=str(decisions),
                        out=str(out), stage=stage)
    steps.done("write", units=len(units))
    merge_map(out, map_path or out / "dedup_map.parquet")
    steps.done("merge map")
    dec = pq.read_table(decisions)
    stats.update(in_rows=n_docs, dropped=sum(r["dropped"] for r in results),
                 clusters=int(pc.sum(pc.invert(dec.column("is_duplicate"))).as_py() or 0),
                 cluster_sizes=cluster_sizes(dec))
    if report:
        from tasks.dedup.report import write_report  # matplotlib loads only when a report is written

        stats["report"] = write_report(out, dec, units, plan, stats, kind)
        steps.done("report")
    shutil.rmtree(work, ignore_errors=True)
    return stats
