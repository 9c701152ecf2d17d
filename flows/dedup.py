"""The standalone dedup flow: near-dedup of a Parquet dataset, its shard-level steps mapped over a Prefect
task runner: a process pool by default, or a Ray cluster through prefect-ray.

The same plain steps (tasks.dedup.lsh / tasks.dedup.steps) run here as Prefect tasks, one per unit,
partition or verify block, so the Prefect UI shows each shard's work and its retries.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from flows.runners import shared_api_url, task_runner
from schemas.dedup import DedupConfig
from tasks.core.shards import runner_map
from tasks.dedup.steps import dedup_dir


def prefect_map(fn: Any, items: list) -> list:
    """A Mapper that submits one Prefect task per item to the current flow's task runner."""
    return runner_map(fn, items, "dedup-shard-step")


@flow(name="dedup", log_prints=True)
def dedup_flow(inputs: list[str], out: str, cfg: DedupConfig, text_field: str | None = None,
               id_field: str | None = "id", map_path: str | None = None, report: bool = True) -> dict[str, Any]:
    """Near-dedup Parquet files: writes the dedup map (id, cluster_id, is_duplicate) and the report."""
    with shared_api_url():
        stats = dedup_dir([Path(p) for p in inputs], cfg, Path(out), stage=None, kind="near", text_field=text_field,
                          id_field=id_field, mapper=prefect_map, map_path=Path(map_path) if map_path else None,
                          report=report)
    if report:
        from tasks.dedup.report import publish_artifacts
        publish_artifacts(Path(out), "near_dedup")
    return stats


def run_dedup_flow(runner: str, workers: int, ray_address: str | None = None, **kwargs: Any) -> dict[str, Any]:
    """Run ``dedup_flow`` on the chosen task runner."""
    return dedup_flow.with_options(task_runner=task_runner(runner, workers, ray_address))(**kwargs)
