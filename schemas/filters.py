"""Config of the annotation-quality and text-quality filters."""
from __future__ import annotations

from typing import Any

from pydantic import Field

from schemas.base import StrictModel


class FilterSpec(StrictModel):
    name: str = Field(description="Registered filter name (see tasks.filters).")
    params: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the filter.")


def _default_filters() -> list[FilterSpec]:
    return [
        FilterSpec(name="min_annotators", params={"min_count": 2}),
        FilterSpec(name="flagged_labels", params={"labels": ["spam", "toxic", "pii", "off_topic"]}),
        FilterSpec(name="min_rating", params={"threshold": 3.0, "aggregate": "mean"}),
        FilterSpec(name="max_rating_spread", params={"max_spread": 2.0}),
        FilterSpec(name="response_length", params={"min_chars": 10, "max_chars": 20_000}),
    ]


class FilterConfig(StrictModel):
    filters: list[FilterSpec] = Field(default_factory=_default_filters,
                                      description="Ordered filter chain; the first filter that rejects wins.")
    dry_run: bool = Field(False, description="Report what would be dropped without dropping it.")


class SplitConfig(StrictModel):
    eval_fraction: float = Field(0.1, ge=0, lt=1, description="Share of records held out for evaluation.")
    seed: int = Field(0, description="Salt of the id hash that assigns records to splits.")
