"""Deterministic train/eval split by a salted hash of the record id.

Hashing the id (not the row position) keeps a record in the same split however the corpus is reordered
or grown, so eval never leaks into train between runs.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from prefect import task

from schemas.filters import SplitConfig
from schemas.pipeline import PipelineConfig
from schemas.record import RECORD_SCHEMA
from tasks.core.stage import Ledger, ShardWriter, StageOutput, code_version, digest, iter_batches, run_stage


def is_eval(record_id: str, eval_fraction: float, seed: int) -> bool:
    """True when the id hashes into the eval share; stable across runs and machines."""
    h = hashlib.blake2b(f"{seed}:{record_id}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2**64 < eval_fraction


def split_records(in_dir: Path, cfg: SplitConfig, out: Path) -> Ledger:
    """Write ``out/train`` and ``out/eval``; every input record lands in exactly one of them."""
    ledger = Ledger("split")
    with ShardWriter(out / "train", RECORD_SCHEMA) as train, ShardWriter(out / "eval", RECORD_SCHEMA) as ev:
        for batch in iter_batches(in_dir):
            table = pa.Table.from_batches([batch])
            mask = pa.array([is_eval(i, cfg.eval_fraction, cfg.seed) for i in table["id"].to_pylist()],
                            pa.bool_())
            ev.write(table.filter(mask))
            train.write(table.filter(pc.invert(mask)))
            ledger.n_in += table.num_rows
    ledger.kept = train.rows + ev.rows
    ledger.extra = {"train": train.rows, "eval": ev.rows}
    return ledger


@task(name="split")
def split_task(upstream: StageOutput, cfg: PipelineConfig) -> StageOutput:
    key = digest("split", code_version("tasks.split", "tasks.core.stage"), cfg.split, upstream.key)
    return run_stage(cfg.workdir, "split", key, lambda tmp: split_records(upstream.data(), cfg.split, tmp))
