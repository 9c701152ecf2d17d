"""The filter stage: run the configured chain over every batch, keep or reject each record, count why.

Two passes over the input. The first reads only ``source`` and ``annotations`` to measure agreement
(Krippendorff's alpha per source) and annotator reliability on the whole input, which the annotation filters
may then use (leaving unreliable annotators out). The second runs the chain: each filter sees only the rows
that every earlier filter kept, so the first filter that rejects a record gets it.
"""
from __future__ import annotations

import functools
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from itertools import repeat
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from schemas.filters import FilterConfig
from schemas.record import MESSAGE, RECORD_SCHEMA, REJECT_SCHEMA
from tasks.core.shards import Mapper
from tasks.core.stage import Ledger, ShardWriter, iter_batches, shard_paths, with_reject_columns
from tasks.filters.agreement import AgreementAccumulator, ReliabilityAccumulator
from tasks.filters.base import FilterBatch
from tasks.filters.chain import build_chain
from tasks.filters.report import build_report, snippet, write_report

STAGE = "filter"
# Rejects say which filter took them, beside the shared reject columns.
FILTER_REJECT_SCHEMA = REJECT_SCHEMA.append(pa.field("reject_filter", pa.string()))


@dataclass
class ChainOutcome:
    """One batch through the chain: what survived, what each filter took and the filters' own counts."""

    kept: pa.Table
    rejected: list[pa.Table] = field(default_factory=list)
    drops: Counter = field(default_factory=Counter)  # (filter, reason) -> rows
    stats: Counter = field(default_factory=Counter)
    seconds: Counter = field(default_factory=Counter)  # filter -> wall time, for the report and benchmarks


def _with_messages(batch: FilterBatch, replace: dict[int, list[dict[str, str]]]) -> FilterBatch:
    """The same rows with some rows' messages rewritten (PII redaction); text views are rebuilt on demand."""
    # Only the rewritten rows go through Python: append them after the old column and pick rows by index.
    old = batch.table.column("messages").combine_chunks()
    changed = sorted(replace)
    # Redaction rewrites contents only: every other message field (a turn's loss weight) is kept.
    redacted = pa.array([[{**o, **n} for o, n in zip(old[i].as_py(), replace[i], strict=True)] for i in changed],
                        type=pa.list_(MESSAGE))
    index = np.arange(batch.n, dtype=np.int64)
    index[changed] = batch.n + np.arange(len(changed))
    col = pa.concat_arrays([old, redacted]).take(pa.array(index))
    table = batch.table.set_column(batch.table.schema.get_field_index("messages"), "messages", col)
    rebuilt = FilterBatch(table, batch.exclude_annotators)
    rebuilt._views = {k: v for k, v in batch._views.items() if k != "messages" and not k.startswith("text:")}
    return rebuilt


def run_chain(batch: FilterBatch, chain: list, dry_run: bool = False) -> ChainOutcome:
    """Pass a batch through the filters in order; rejected rows carry reject_* columns naming filter and reason."""
    out = ChainOutcome(kept=batch.table)
    for name, fn in chain:
        if batch.n == 0:
            break
        started = time.perf_counter()
        res = fn(batch)
        keep = np.asarray(res.keep, dtype=bool)
        if keep.shape != (batch.n,):
            raise ValueError(f"filter {name!r} returned a mask of shape {keep.shape} for {batch.n} rows")
        out.stats.update(res.stats)
        if res.replace and not dry_run:
            batch = _with_messages(batch, res.replace)
        dropped = np.flatnonzero(~keep)
        if len(dropped) == 0:
            out.seconds[name] += time.perf_counter() - started
            continue
        reasons = [res.reason(int(i)) for i in dropped]
        details = [f"{name}: {d}" if (d := res.detail(int(i))) else name for i in dropped]
        rej = with_reject_columns(batch.table.take(pa.array(dropped)), STAGE, reasons, details)
        out.rejected.append(rej.append_column("reject_filter", pa.array([name] * len(dropped), pa.string())))
        out.drops.update((name, r) for r in reasons)
        batch = batch.take(np.flatnonzero(keep))
        out.seconds[name] += time.perf_counter() - started
    out.kept = batch.table
    return out


def _annotation_frame(table: pa.Table, exclude: frozenset[str] = frozenset()) -> pd.DataFrame:
    frame = FilterBatch(table, exclude).annotations()
    sources = np.asarray(table.column("source").to_pylist(), dtype=object)
    return frame.assign(source=sources[frame["row"].to_numpy()] if len(frame) else [])


def measure_agreement(in_dir: Path, cfg: FilterConfig) -> tuple[dict, dict, frozenset[str]]:
    """First pass: alpha per source, each annotator's reliability, and the annotators to leave out.

    With unreliable annotators left out, a further narrow pass measures alpha without them too."""
    def narrow() -> Iterator[pa.Table]:
        # Two narrow columns only, so big batches are cheap and spare pandas its per-call overhead.
        for rb in iter_batches(in_dir, max(cfg.batch_size, 100_000), columns=["source", "annotations"]):
            yield pa.Table.from_batches([rb])

    agreement, reliability = AgreementAccumulator(), ReliabilityAccumulator()
    for table in narrow():
        frame = _annotation_frame(table)
        agreement.add(frame)
        if cfg.reliability.enabled:
            reliability.add(frame)
    r = cfg.reliability
    annotators = reliability.report(r.min_items, r.min_correlation, r.max_mean_abs_diff) if r.enabled else {}
    exclude = frozenset(a for a, s in annotators.items() if s["unreliable"]) if r.exclude_unreliable else frozenset()
    figures = agreement.report()
    if exclude:
        without = AgreementAccumulator()
        for table in narrow():
            without.add(_annotation_frame(table, exclude))
        for source, alphas in without.report().items():
            figures.setdefault(source, {}).update({f"{k}_reliable_only": v for k, v in alphas.items()
                                                   if k.startswith("alpha_")})
    return figures, annotators, exclude


@dataclass
class ShardOutcome:
    """What filtering one input shard produced, beside the rows it wrote."""

    n_in: int = 0
    drops: Counter = field(default_factory=Counter)
    stats: Counter = field(default_factory=Counter)
    seconds: Counter = field(default_factory=Counter)
    examples: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)


class _LazyWriter:
    """A ShardWriter that creates no file until the first row, so shards without rejects leave no empty files."""

    def __init__(self, directory: Path, schema: pa.Schema, prefix: str):
        self.args, self.writer = (directory, schema, prefix), None

    def write(self, table: pa.Table) -> None:
        if table.num_rows:
            if self.writer is None:
                directory, schema, prefix = self.args
                self.writer = ShardWriter(directory, schema, prefix=prefix)
            self.writer.write(table)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def filter_shard(path: Path, index: int, cfg: FilterConfig, exclude: frozenset[str], out: Path) -> ShardOutcome:
    """Second pass over one input shard; outputs are named after the shard, so their order is the input's."""
    chain = build_chain(cfg.filters)
    res = ShardOutcome()
    kept_w = _LazyWriter(out / "data", RECORD_SCHEMA, f"part-{index:05d}")
    rej_w = _LazyWriter(out / ("would_reject" if cfg.dry_run else "rejects"), FILTER_REJECT_SCHEMA,
                        f"part-{index:05d}")
    try:
        for rb in pq.ParquetFile(path).iter_batches(batch_size=cfg.batch_size):
            table = pa.Table.from_batches([rb])
            res.n_in += table.num_rows
            outcome = run_chain(FilterBatch(table, exclude), chain, cfg.dry_run)
            res.drops.update(outcome.drops)
            res.stats.update(outcome.stats)
            res.seconds.update(outcome.seconds)
            for rej in outcome.rejected:
                rej_w.write(rej)
                _collect_examples(rej, res.examples, cfg.examples_per_reason)
            kept_w.write(table if cfg.dry_run else outcome.kept)
    finally:
        kept_w.close()
        rej_w.close()
    return res


def _filter_item(item: tuple[str, int], cfg: FilterConfig, exclude: frozenset[str], out: str) -> ShardOutcome:
    """One mapped shard (a runner's task): ``(input shard path, its index)``."""
    return filter_shard(Path(item[0]), item[1], cfg, exclude, Path(out))


def _run_shards(paths: list[Path], cfg: FilterConfig, exclude: frozenset[str], out: Path,
                mapper: Mapper | None = None) -> list[ShardOutcome]:
    if mapper is not None:  # a task runner's workers: each reads its shard and writes its outputs under out/
        return mapper(functools.partial(_filter_item, cfg=cfg, exclude=exclude, out=str(out)),
                      [(str(p), i) for i, p in enumerate(paths)])
    if cfg.workers <= 1 or len(paths) <= 1:
        return [filter_shard(p, i, cfg, exclude, out) for i, p in enumerate(paths)]
    # spawn, not fork: the parent may run Prefect's and MLflow's threads, which fork does not copy safely.
    with ProcessPoolExecutor(min(cfg.workers, len(paths)), mp_context=get_context("spawn")) as pool:
        return list(pool.map(filter_shard, paths, range(len(paths)), repeat(cfg), repeat(exclude), repeat(out)))


def apply_filters(in_dir: Path, cfg: FilterConfig, out: Path, mapper: Mapper | None = None) -> Ledger:
    """Stage "filter": kept rows to out/data, rejects to out/rejects (in dry-run: out/would_reject), a report.
    ``mapper`` runs the per-shard pass (default: in-process, or a local pool of ``cfg.workers``)."""
    in_dir, out = Path(in_dir), Path(out)
    chain_names = [name for name, _ in build_chain(cfg.filters)]  # fails fast on a bad chain
    paths = shard_paths(in_dir)
    if not paths:
        raise FileNotFoundError(f"filter: no Parquet shards in {in_dir}")
    started = time.perf_counter()
    agreement, annotators, exclude = measure_agreement(in_dir, cfg)
    seconds: Counter = Counter({"agreement_pass": time.perf_counter() - started})
    outcomes = _run_shards(paths, cfg, exclude, out, mapper)
    ledger = Ledger(STAGE)
    drops: Counter = Counter()
    stats: Counter = Counter()
    examples: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for res in outcomes:  # in shard order, so the report's examples do not depend on scheduling
        ledger.n_in += res.n_in
        drops.update(res.drops)
        stats.update(res.stats)
        seconds.update(res.seconds)
        for key, exs in res.examples.items():
            bucket = examples.setdefault(key, [])
            bucket.extend(exs[: cfg.examples_per_reason - len(bucket)])
    for sub, schema in (("data", RECORD_SCHEMA), ("rejects", FILTER_REJECT_SCHEMA),
                        ("would_reject", FILTER_REJECT_SCHEMA)):
        if (sub != "would_reject" or cfg.dry_run) and not shard_paths(out / sub):
            ShardWriter(out / sub, schema).close()  # an empty dataset still has its schema on disk
    by_reason: Counter = Counter()
    for (_, reason), n in drops.items():
        by_reason[reason] += n
    ledger.kept = ledger.n_in if cfg.dry_run else ledger.n_in - sum(drops.values())
    if not cfg.dry_run:
        for reason, n in by_reason.items():
            ledger.drop(reason, n)
    report = build_report(cfg, ledger.n_in, drops, stats, examples, agreement, annotators, exclude, chain_names)
    write_report(report, out)
    ledger.extra = {"dry_run": cfg.dry_run, "agreement": agreement, "table": report["table"],
                    "stats": dict(sorted(stats.items())),
                    "unreliable_annotators": sorted(a for a, s in annotators.items() if s["unreliable"])[:100],
                    "excluded_annotators": len(exclude),
                    "seconds": {k: round(v, 3) for k, v in seconds.items()}}
    if cfg.dry_run:
        ledger.extra["would_drop"] = dict(sorted(by_reason.items()))
    return ledger


def _collect_examples(rej: pa.Table, examples: dict, k: int) -> None:
    if k == 0:
        return
    cols = {c: rej.column(c).to_pylist() for c in ("id", "source", "reject_filter", "reject_reason", "reject_detail")}
    msgs = None
    for i in range(rej.num_rows):
        key = (cols["reject_filter"][i], cols["reject_reason"][i])
        bucket = examples.setdefault(key, [])
        if len(bucket) >= k:
            continue
        if msgs is None:
            msgs = rej.column("messages").to_pylist()
        m = msgs[i] or []
        bucket.append({"id": cols["id"][i], "source": cols["source"][i], "detail": cols["reject_detail"][i],
                       "prompt": snippet(" / ".join(x["content"] or "" for x in m if x["role"] != "assistant")),
                       "response": snippet(" / ".join(x["content"] or "" for x in m if x["role"] == "assistant"))})
