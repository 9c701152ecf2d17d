"""Filter name -> function. A filter is ``fn(batch: FilterBatch, params) -> FilterResult``.

Parameter models live in schemas.filters.FILTER_PARAMS (so configs validate before any work starts); this
module holds the behaviour under the same names. ``build_chain`` pairs them up in config order.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from schemas.filters import FILTER_PARAMS, FilterSpec
from tasks.filters.batch import FilterBatch, FilterResult

FilterFn = Callable[[FilterBatch, Any], FilterResult]
FILTERS: dict[str, FilterFn] = {}


def register(name: str) -> Callable[[FilterFn], FilterFn]:
    if name not in FILTER_PARAMS:
        raise KeyError(f"filter {name!r} has no parameter model in schemas.filters.FILTER_PARAMS")

    def wrap(fn: FilterFn) -> FilterFn:
        FILTERS[name] = fn
        return fn
    return wrap


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
