"""Annotation-quality and text-quality filters (stage "filter").

A filter is a plain function ``fn(batch: FilterBatch, params) -> FilterResult`` (a keep mask and a reason per
dropped row), registered by name in ``registry.FILTERS``; its parameters are a pydantic model in
``schemas.filters.FILTER_PARAMS``. ``apply_filters`` runs the configured chain over a shard directory;
``filter_task`` is its Prefect task and ``filter_publication`` its report for MLflow.
"""
from __future__ import annotations

from typing import Any

from tasks.filters.agreement import krippendorff_alpha
from tasks.filters.apply import STAGE, apply_filters, run_chain
from tasks.filters.base import FILTERS, FilterBatch, FilterResult, register
from tasks.filters.chain import build_chain

# Prefect takes seconds to import; the plain functions above do not need it, so the task loads on first use.
_LAZY = {"filter_task", "filter_key", "filter_publication"}

__all__ = ["FILTERS", "STAGE", "FilterBatch", "FilterResult", "apply_filters", "build_chain",
           "krippendorff_alpha", "register", "run_chain", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from tasks.filters import stage
        return getattr(stage, name)
    raise AttributeError(f"module 'tasks.filters' has no attribute {name!r}")
