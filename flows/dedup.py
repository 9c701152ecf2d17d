"""The standalone dedup flow: near-dedup of a Parquet dataset, its shard-level steps mapped over a Prefect
task runner: a process pool by default, or a Ray cluster through prefect-ray.

The same plain steps (tasks.dedup.lsh / tasks.dedup.steps) run here as Prefect tasks, one per unit,
partition or verify block, so the Prefect UI shows each shard's work and its retries.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefect import flow, task, unmapped

from schemas.dedup import DedupConfig
from tasks.dedup.steps import dedup_dir


@task(name="dedup-shard-step")
def run_step(fn: Callable[[Any], Any], item: Any) -> Any:
    """One shard-level step (sketch a unit, bucket a partition, verify a block, write a unit)."""
    return fn(item)


def prefect_map(fn: Callable[[Any], Any], items: list) -> list:
    """A Mapper that submits one Prefect task per item to the current flow's task runner."""
    if not items:
        return []
    return run_step.map(unmapped(fn), items).result()


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


@contextmanager
def shared_api_url() -> Iterator[None]:
    """Point spawned task-runner workers at this run's API server, for the duration of the block.

    Without an explicit PREFECT_API_URL, each process-pool worker (a fresh interpreter) would start a
    temporary server of its own: seconds per worker, and task runs that the parent's UI never sees.
    """
    if os.environ.get("PREFECT_API_URL"):
        yield
        return
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        os.environ["PREFECT_API_URL"] = str(client.api_url)
    try:
        yield
    finally:
        os.environ.pop("PREFECT_API_URL", None)


def task_runner(kind: str, workers: int, ray_address: str | None = None) -> Any:
    """The task runner for ``kind``: 'processes' (Prefect's process pool) or 'ray' (prefect-ray)."""
    if kind == "ray":
        try:
            from prefect_ray import RayTaskRunner
        except ImportError as exc:
            raise RuntimeError("the ray runner needs prefect-ray: pip install prefect-ray 'ray[default]'") from exc
        # a local cluster: no dashboard (it slows the start on small machines), as many CPUs as workers
        init = {"num_cpus": workers, "include_dashboard": False} if ray_address is None else {}
        return RayTaskRunner(address=ray_address, init_kwargs=init)
    from prefect.task_runners import ProcessPoolTaskRunner
    return ProcessPoolTaskRunner(max_workers=workers)


def run_dedup_flow(runner: str, workers: int, ray_address: str | None = None, **kwargs: Any) -> dict[str, Any]:
    """Run ``dedup_flow`` on the chosen task runner."""
    return dedup_flow.with_options(task_runner=task_runner(runner, workers, ray_address))(**kwargs)
