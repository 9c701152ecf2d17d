"""The filter stage: run the configured chain over every batch, keep or reject each record, count why.

Two passes over the input. The first reads only ``source`` and ``annotations`` to measure agreement
(Krippendorff's alpha per source) and annotator reliability on the whole input, which the annotation filters
may then use (leaving unreliable annotators out). The second runs the chain: each filter sees only the rows
that every earlier filter kept, so the first filter that rejects a record gets it.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from schemas.filters import FilterConfig
from schemas.record import MESSAGE, RECORD_SCHEMA, REJECT_SCHEMA
from tasks.filters.agreement import AgreementAccumulator, ReliabilityAccumulator
from tasks.filters.batch import FilterBatch
from tasks.filters.registry import build_chain
from tasks.filters.report import build_report, snippet, write_report
from tasks.stage import Ledger, ShardWriter, iter_batches, with_reject_columns

STAGE = "filter"
VERSION = "1"
# Rejects say which filter took them, beside the shared reject columns.
FILTER_REJECT_SCHEMA = REJECT_SCHEMA.append(pa.field("reject_filter", pa.string()))


@dataclass
class ChainOutcome:
    """One batch through the chain: what survived, what each filter took and the filters' own counts."""

    kept: pa.Table
    rejected: list[pa.Table] = field(default_factory=list)
    drops: Counter = field(default_factory=Counter)  # (filter, reason) -> rows
    stats: Counter = field(default_factory=Counter)


def _with_messages(batch: FilterBatch, replace: dict[int, list[dict[str, str]]]) -> FilterBatch:
    """The same rows with some rows' messages rewritten (PII redaction); text views are rebuilt on demand."""
    rows = batch.table.column("messages").to_pylist()
    for i, msgs in replace.items():
        rows[i] = msgs
    col = pa.array(rows, type=pa.list_(MESSAGE))
    table = batch.table.set_column(batch.table.schema.get_field_index("messages"), "messages", col)
    new = FilterBatch(table, batch.exclude_annotators)
    new._views = {k: v for k, v in batch._views.items() if k != "messages" and not k.startswith("text:")}
    return new


def run_chain(batch: FilterBatch, chain: list, dry_run: bool = False) -> ChainOutcome:
    """Pass a batch through the filters in order; rejected rows carry reject_* columns naming filter and reason."""
    out = ChainOutcome(kept=batch.table)
    for name, fn in chain:
        if batch.n == 0:
            break
        res = fn(batch)
        keep = np.asarray(res.keep, dtype=bool)
        if keep.shape != (batch.n,):
            raise ValueError(f"filter {name!r} returned a mask of shape {keep.shape} for {batch.n} rows")
        out.stats.update(res.stats)
        if res.replace and not dry_run:
            batch = _with_messages(batch, res.replace)
        dropped = np.flatnonzero(~keep)
        if len(dropped) == 0:
            continue
        reasons = [res.reason(int(i)) for i in dropped]
        details = [f"{name}: {res.detail(int(i)) or ''}".rstrip(": ") for i in dropped]
        rej = with_reject_columns(batch.table.take(pa.array(dropped)), STAGE, reasons, details)
        out.rejected.append(rej.append_column("reject_filter", pa.array([name] * len(dropped), pa.string())))
        out.drops.update((name, r) for r in reasons)
        batch = batch.take(np.flatnonzero(keep))
    out.kept = batch.table
    return out


def _annotation_frame(table: pa.Table, exclude: frozenset[str] = frozenset()) -> pd.DataFrame:
    frame = FilterBatch(table, exclude).annotations()
    sources = np.asarray(table.column("source").to_pylist(), dtype=object)
    return frame.assign(source=sources[frame["row"].to_numpy()] if len(frame) else [])


def measure_agreement(in_dir: Path, cfg: FilterConfig) -> tuple[dict, dict, frozenset[str]]:
    """First pass: alpha per source, each annotator's reliability, and the annotators to leave out."""
    agreement, reliability = AgreementAccumulator(), ReliabilityAccumulator()
    # Two narrow columns only, so big batches are cheap and spare pandas its per-call overhead.
    for rb in iter_batches(in_dir, max(cfg.batch_size, 100_000), columns=["source", "annotations"]):
        frame = _annotation_frame(pa.Table.from_batches([rb]))
        agreement.add(frame)
        if cfg.reliability.enabled:
            reliability.add(frame)
    r = cfg.reliability
    annotators = reliability.report(r.min_items, r.min_correlation, r.max_mean_abs_diff) if r.enabled else {}
    exclude = frozenset(a for a, s in annotators.items() if s["unreliable"]) if r.exclude_unreliable else frozenset()
    return agreement.report(), annotators, exclude


def apply_filters(in_dir: Path, cfg: FilterConfig, out: Path) -> Ledger:
    """Stage "filter": kept rows to out/data, rejects to out/rejects (in dry-run: out/would_reject), a report."""
    in_dir, out = Path(in_dir), Path(out)
    chain = build_chain(cfg.filters)
    agreement, annotators, exclude = measure_agreement(in_dir, cfg)
    ledger = Ledger(STAGE)
    drops: Counter = Counter()
    stats: Counter = Counter()
    examples: dict[tuple[str, str], list[dict[str, Any]]] = {}
    kept_agreement = AgreementAccumulator() if exclude else None
    reject_dir = out / ("would_reject" if cfg.dry_run else "rejects")
    with ShardWriter(out / "data", RECORD_SCHEMA) as kept_w, \
            ShardWriter(reject_dir, FILTER_REJECT_SCHEMA) as rej_w:
        for rb in iter_batches(in_dir, cfg.batch_size):
            table = pa.Table.from_batches([rb])
            ledger.n_in += table.num_rows
            batch = FilterBatch(table, exclude)
            if kept_agreement is not None:
                kept_agreement.add(_annotation_frame(table, exclude))
            res = run_chain(batch, chain, cfg.dry_run)
            drops.update(res.drops)
            stats.update(res.stats)
            for rej in res.rejected:
                rej_w.write(rej)
                _collect_examples(rej, examples, cfg.examples_per_reason)
            kept_w.write(table if cfg.dry_run else res.kept)
    ledger.kept = ledger.n_in if cfg.dry_run else ledger.n_in - sum(drops.values())
    by_reason: Counter = Counter()
    for (_, reason), n in drops.items():
        by_reason[reason] += n
    if not cfg.dry_run:
        for reason, n in by_reason.items():
            ledger.drop(reason, n)
    if cfg.dry_run:  # the same layout as a real run: an empty rejects/ beside would_reject/
        ShardWriter(out / "rejects", FILTER_REJECT_SCHEMA).close()
    if kept_agreement is not None:
        for source, figures in kept_agreement.report().items():
            agreement.setdefault(source, {}).update({f"{k}_reliable_only": v for k, v in figures.items()
                                                     if k.startswith("alpha_")})
    report = build_report(cfg, ledger.n_in, drops, stats, examples, agreement, annotators, exclude,
                          [name for name, _ in chain])
    write_report(report, out)
    ledger.extra = {"dry_run": cfg.dry_run, "agreement": agreement, "table": report["table"],
                    "stats": dict(sorted(stats.items())),
                    "unreliable_annotators": sorted(a for a, s in annotators.items() if s["unreliable"])[:100],
                    "excluded_annotators": len(exclude)}
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
