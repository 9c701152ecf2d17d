"""The task runner a flow's shard tasks go to, chosen by the ``runner`` config section (or ``--runner``).

One factory for every flow that maps shard work: ``curate``, ``train`` (its tokenize stage) and the
standalone ``dedup`` flow. 'local' keeps Prefect's default thread pool (the stages then run their own
process pools); 'processes' is Prefect's process pool; 'ray' is prefect-ray's RayTaskRunner, which joins
the cluster at ``ray_address`` or starts a local Ray instance, and reuses one already started in-process.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from schemas.runner import RunnerConfig

R = TypeVar("R")


def task_runner(kind: str, workers: int, ray_address: str | None = None) -> Any:
    """The task runner for ``kind``: 'processes' (Prefect's process pool), 'ray' (prefect-ray), else None
    (the flow's default)."""
    if kind == "ray":
        try:
            from prefect_ray import RayTaskRunner
        except ImportError as exc:
            raise RuntimeError("runner.kind ray needs prefect-ray: pip install 'peftpipe[ray]' "
                               "(prefect-ray and ray[default])") from exc
        # a local instance: no dashboard (it slows the start on small machines), as many CPUs as workers
        init = {"num_cpus": workers, "include_dashboard": False} if ray_address is None else {}
        return RayTaskRunner(address=ray_address, init_kwargs=init)
    if kind == "processes":
        from prefect.task_runners import ProcessPoolTaskRunner
        return ProcessPoolTaskRunner(max_workers=workers)
    return None


def on_runner(flow_obj: Callable[..., R], runner: RunnerConfig) -> Callable[..., R]:
    """``flow_obj`` on the task runner ``runner`` names (itself for 'local').

    The call runs under ``shared_api_url``: a local Ray instance starts when the flow enters its task runner,
    before the flow body runs, and its workers take the environment of that moment, so the API URL must be
    in the environment before the call, or each Ray worker would start a temporary server of its own."""
    chosen = task_runner(runner.kind, runner.workers, runner.ray_address)
    if chosen is None:
        return flow_obj
    placed = flow_obj.with_options(task_runner=chosen)  # type: ignore[attr-defined]

    @functools.wraps(flow_obj)
    def call(*args: Any, **kwargs: Any) -> R:
        with shared_api_url():
            return placed(*args, **kwargs)
    return call


@contextmanager
def shared_api_url() -> Iterator[None]:
    """Point spawned task-runner workers at this run's API server, for the duration of the block (outside a
    flow, this starts the temporary server the flow will then use).

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


@contextmanager
def worker_api_url(runner: RunnerConfig) -> Iterator[None]:
    """``shared_api_url`` where ``runner`` sends work to other processes; nothing for 'local'."""
    if runner.kind == "local":
        yield
        return
    with shared_api_url():
        yield
