"""Keep the separate eval sets out of training: a split-shaped stage whose train part has every record that
shares too much text with an eval set held out, with its reason.

The check is the sweep's (``tasks.sweep.compare.shared_eval_split``) applied to the configured eval set files:
word n-gram hashes (``tasks.filters.decontam.ngram_hashes``) of each eval item's prompt and reference in one
sorted index; a train record with more than ``evaluate.leak_max`` of its n-grams in the index is held out as
``overlaps_eval_set``. The eval part is copied unchanged. Ledger: ``in = train + eval records``,
``kept = train kept + eval``, so nothing is lost between the split and tokenization.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
from prefect import task

from schemas.evaluate import EvalConfig
from schemas.pipeline import PipelineConfig
from schemas.record import RECORD_SCHEMA, REJECT_SCHEMA
from tasks.core.records import record_text
from tasks.core.stage import (
    Ledger,
    ShardWriter,
    StageOutput,
    code_version,
    digest,
    iter_batches,
    run_stage,
    with_reject_columns,
)
from tasks.evaluate.evalsets import EvalSet, eval_sets_digest, file_set
from tasks.filters.decontam import ngram_hashes

STAGE = "eval_set_holdout"


def record_texts(table: pa.Table) -> list[str]:
    """Every turn of each record ("all" of schemas.record.TEXT_ROLES): what the leak checks compare."""
    return record_text(table.column("messages"), "all").to_pylist()


def text_index(texts: list[str], ngram: int) -> np.ndarray:
    """Sorted unique word n-gram hashes of ``texts``."""
    return np.unique(ngram_hashes(texts, ngram)[0]) if texts else np.empty(0, np.uint64)


def overlap_shares(texts: list[str], index: np.ndarray, ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """Per text: how many of its n-grams are in ``index``, and how many it has."""
    grams, owner = ngram_hashes(texts, ngram)
    totals = np.bincount(owner, minlength=len(texts))
    if len(index) == 0 or len(grams) == 0:
        return np.zeros(len(texts), np.int64), totals
    pos = np.minimum(np.searchsorted(index, grams), len(index) - 1)
    return np.bincount(owner[index[pos] == grams], minlength=len(texts)), totals


def holdout_eval_sets(split_dir: Path, sets: list[EvalSet], ngram: int, max_overlap: float, out: Path) -> Ledger:
    """Write ``out/train`` (``split_dir/train`` less records overlapping any of ``sets``), ``out/eval`` (a copy
    of ``split_dir/eval``) and ``out/rejects`` (the held-out records, with the set and the overlap)."""
    split_dir, out = Path(split_dir), Path(out)
    indexes = [(es.name, text_index(es.texts(), ngram)) for es in sets]
    ledger = Ledger(STAGE)
    with ShardWriter(out / "train", RECORD_SCHEMA) as train, ShardWriter(out / "eval", RECORD_SCHEMA) as ev, \
            ShardWriter(out / "rejects", REJECT_SCHEMA) as rejects:
        for batch in iter_batches(split_dir / "train"):
            table = pa.Table.from_batches([batch])
            texts = record_texts(table)
            drop = np.zeros(table.num_rows, dtype=bool)
            details: list[str | None] = [None] * table.num_rows
            for name, index in indexes:
                hits, totals = overlap_shares(texts, index, ngram)
                share = np.divide(hits, totals, out=np.zeros(len(hits)), where=totals > 0)
                for i in np.flatnonzero(~drop & (share > max_overlap)):
                    details[i] = f"eval set {name}: {ngram}-gram overlap={hits[i]}/{totals[i]} " \
                                 f"({share[i]:.3g}>{max_overlap})"
                drop |= share > max_overlap
            if drop.any():
                idx = np.flatnonzero(drop)
                rejects.write(with_reject_columns(table.take(pa.array(idx)), STAGE, "overlaps_eval_set",
                                                  [details[i] for i in idx]))
                ledger.drop("overlaps_eval_set", len(idx))
            train.write(table.filter(pa.array(~drop)))
            ledger.n_in += table.num_rows
        for batch in iter_batches(split_dir / "eval"):
            table = pa.Table.from_batches([batch])
            ev.write(table)
            ledger.n_in += table.num_rows
        ledger.kept = train.rows + ev.rows
        ledger.extra = {"train": train.rows, "eval": ev.rows,
                        **{f"eval_set.{es.name}.items": len(es.items) for es in sets}}
    return ledger


def holdout_eval_sets_stage(split: StageOutput, cfg: EvalConfig, workdir: str) -> StageOutput:
    """Content-addressed ``holdout_eval_sets`` of a split-shaped stage; the split itself when no eval set is
    configured (nothing to hold out, and the cached stages downstream stay valid)."""
    if not cfg.eval_sets:
        return split
    sets = [file_set(s, None) for s in cfg.eval_sets]  # every item, not only the scored ones: none may leak
    code = code_version("tasks.evaluate.leakcheck", "tasks.evaluate.evalsets", "tasks.core.stage")
    key = digest(STAGE, code, split.key, cfg.leak_ngram, cfg.leak_max, eval_sets_digest(cfg),
                 [s.model_dump() for s in cfg.eval_sets])
    return run_stage(workdir, STAGE, key, lambda tmp: holdout_eval_sets(split.path, sets, cfg.leak_ngram,
                                                                        cfg.leak_max, tmp))


@task(name="eval-set-holdout")
def holdout_eval_sets_task(split: StageOutput, cfg: PipelineConfig) -> StageOutput:
    """Prefect wrapper: hold the configured eval sets out of the split's train part."""
    return holdout_eval_sets_stage(split, cfg.evaluate, cfg.workdir)
