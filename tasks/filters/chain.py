"""The configured filter chain: each filter's behaviour paired with its parsed parameters, in config order.

A filter is ``fn(batch: FilterBatch, params) -> FilterResult``, registered in ``tasks.filters.base.FILTERS``.
Importing the filter modules here (never the other way round) keeps the import graph acyclic.
"""
from __future__ import annotations

from collections.abc import Callable

from schemas.filters import FilterSpec
from tasks.filters.base import FILTERS, FilterBatch, FilterResult


def build_chain(specs: list[FilterSpec]) -> list[tuple[str, Callable[[FilterBatch], FilterResult]]]:
    """The configured filters as (name, fn(batch)) in order, parameters parsed once."""
    _load_all()
    chain = []
    for spec in specs:
        if spec.name not in FILTERS:
            raise KeyError(f"filter {spec.name!r} is configured but not implemented; known: {sorted(FILTERS)}")
        fn, params = FILTERS[spec.name], spec.parsed()
        chain.append((spec.name, lambda batch, fn=fn, params=params: fn(batch, params)))
    return chain


def _load_all() -> None:
    # Importing the modules runs their @register decorators.
    from tasks.filters import annotation, decontam, pii, text  # noqa: F401
