"""Annotation-quality and text-quality filters (stage "filter").

A filter is a plain function ``fn(batch: FilterBatch, params) -> FilterResult`` (a keep mask and a reason per
dropped row), registered by name in ``registry.FILTERS``; its parameters are a pydantic model in
``schemas.filters.FILTER_PARAMS``. ``apply_filters`` runs the configured chain over a shard directory.
"""
from tasks.filters.agreement import krippendorff_alpha
from tasks.filters.apply import STAGE, VERSION, apply_filters, run_chain
from tasks.filters.batch import FilterBatch, FilterResult
from tasks.filters.registry import FILTERS, build_chain, register
from tasks.filters.task import filter_key, filter_task, log_filter_report_to_mlflow

__all__ = ["FILTERS", "STAGE", "VERSION", "FilterBatch", "FilterResult", "apply_filters", "build_chain",
           "filter_key", "filter_task", "krippendorff_alpha", "log_filter_report_to_mlflow", "register",
           "run_chain"]
