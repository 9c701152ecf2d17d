"""Shard-level work as Prefect tasks on the running flow's task runner (processes, or Ray via prefect-ray).

A ``Mapper`` is ``mapper(fn, items) -> [fn(item) for item in items]``, in order. The stages hand theirs
plain top-level functions (``functools.partial`` of them) whose items are paths and small plans: a worker
reads its input shard from the stage directory and writes its output shard there, and returns only counts,
so nothing big travels through Prefect or Ray. The parent merges the results in item order, never in the
order they finished, which is what keeps the outputs the same byte for byte whichever runner ran them.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect import task, unmapped
from prefect.cache_policies import NO_CACHE

from schemas.runner import RunnerConfig

Mapper = Callable[[Callable[[Any], Any], list], list]


# No Prefect cache or stored result: the stage directory is the cache (tasks.core.stage.run_stage).
@task(name="shard-step", cache_policy=NO_CACHE, persist_result=False)
def run_shard_step(fn: Callable[[Any], Any], item: Any) -> Any:
    """One shard of a stage's work (convert a byte range, sketch a unit, filter a shard, encode a shard)."""
    return fn(item)


def runner_map(fn: Callable[[Any], Any], items: list, name: str = "shard-step") -> list:
    """A Mapper that submits one Prefect task per item to the current flow's task runner."""
    if not items:
        return []
    return run_shard_step.with_options(name=name).map(unmapped(fn), items).result()


def stage_mapper(runner: RunnerConfig, stage: str) -> Mapper | None:
    """The Mapper of a stage's shard work under ``runner``; None for 'local' (the stage's own pool or loop)."""
    if runner.kind == "local":
        return None

    def mapper(fn: Callable[[Any], Any], items: list) -> list:
        return runner_map(fn, items, f"{stage}-shard")
    return mapper
