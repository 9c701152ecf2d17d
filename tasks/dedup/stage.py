"""Exact and near-duplicate removal stages (issue 4): plain stage functions and their Prefect tasks.

``exact_dedup`` drops records whose normalized compared text is identical; ``near_dedup`` drops records
whose word/char n-gram sets have Jaccard >= threshold with another record's (MinHash LSH candidates,
verified exactly). Both keep one record per cluster by the configured rule, write ``dedup_map.parquet``
(every id -> cluster id, kept flag) and a report, and keep their rejects with cluster and kept ids.
Shard-level work goes through a ``Mapper``: serial, a local process pool, or a Prefect task runner.
"""
from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
from prefect import task

from schemas.dedup import DedupConfig
from schemas.pipeline import PipelineConfig
from schemas.record import RECORD_SCHEMA
from tasks.core.shards import Mapper, stage_mapper
from tasks.core.stage import Ledger, ShardWriter, StageOutput, code_version, digest, run_stage, shard_paths
from tasks.dedup.steps import DEDUP_REJECT_SCHEMA, EXACT, NEAR, REASONS, dedup_dir

__all__ = ["dedup_key", "exact_dedup", "near_dedup", "exact_dedup_task", "near_dedup_task", "EXACT", "NEAR"]


def _stage(in_dir: Path, cfg: DedupConfig, out: Path, stage: str, enabled: bool, mapper: Mapper | None = None
           ) -> Ledger:
    ledger = Ledger(stage)
    if not enabled:  # pass everything through, still with a ledger and an (empty) rejects set
        with ShardWriter(out / "data", RECORD_SCHEMA) as writer:
            for path in shard_paths(in_dir):
                table = pq.read_table(path)
                writer.write(table)
                ledger.n_in += table.num_rows
        ShardWriter(out / "rejects", DEDUP_REJECT_SCHEMA).close()
        ledger.kept = ledger.n_in
        ledger.extra = {"skipped": True}
        return ledger
    stats = dedup_dir(in_dir, cfg, out, stage, "near" if stage == NEAR else "exact", mapper=mapper)
    ledger.n_in = stats["in_rows"]
    ledger.drop(REASONS[stage], stats["dropped"])
    ledger.kept = ledger.n_in - stats["dropped"]
    ledger.extra = {k: v for k, v in stats.items() if k not in ("in_rows", "dropped")}
    return ledger


def exact_dedup(in_dir: Path, cfg: DedupConfig, out: Path, mapper: Mapper | None = None) -> Ledger:
    """Drop records whose normalized compared text is identical to another's (keep rule per group).
    ``mapper`` runs the shard steps (default: the stage's own process pool of ``cfg.workers``)."""
    return _stage(Path(in_dir), cfg, Path(out), EXACT, cfg.exact, mapper)


def near_dedup(in_dir: Path, cfg: DedupConfig, out: Path, mapper: Mapper | None = None) -> Ledger:
    """Drop records with a verified near-duplicate (Jaccard >= threshold), one kept per cluster."""
    return _stage(Path(in_dir), cfg, Path(out), NEAR, cfg.near, mapper)


# ---------------------------------------------------------------------------------------------- Prefect tasks

def _publish(output: StageOutput) -> StageOutput:
    from tasks.dedup.report import publish_artifacts
    publish_artifacts(output.path, output.name)
    return output


def dedup_key(stage: str, upstream_key: str, cfg: PipelineConfig) -> str:
    """The stage's cache key: its kind, the dedup package's source, the settings that change the output."""
    return digest(stage, code_version("tasks.dedup", "tasks.core.stage"), cfg.dedup.cache_settings(), upstream_key)


@task(name="exact_dedup")
def exact_dedup_task(upstream: StageOutput, cfg: PipelineConfig) -> StageOutput:
    key = dedup_key(EXACT, upstream.key, cfg)
    mapper = stage_mapper(cfg.runner, EXACT)
    return _publish(run_stage(cfg.workdir, EXACT, key,
                              lambda tmp: exact_dedup(upstream.data(), cfg.dedup, tmp, mapper)))


@task(name="near_dedup")
def near_dedup_task(upstream: StageOutput, cfg: PipelineConfig) -> StageOutput:
    key = dedup_key(NEAR, upstream.key, cfg)
    mapper = stage_mapper(cfg.runner, NEAR)
    return _publish(run_stage(cfg.workdir, NEAR, key, lambda tmp: near_dedup(upstream.data(), cfg.dedup, tmp, mapper)))
