"""Config of exact and MinHash near-duplicate removal."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from schemas.base import StrictModel


class DedupConfig(StrictModel):
    exact: bool = Field(True, description="Drop records whose normalized text is identical.")
    near: bool = Field(True, description="Drop near-duplicates found with MinHash LSH.")
    text: Literal["prompt_response", "prompt", "response", "all"] = Field(
        "prompt_response", description="Which text is compared.")
    shingle: Literal["word", "char"] = Field("word", description="Word or character n-grams.")
    ngram: int = Field(5, ge=1, description="Shingle size in words or characters.")
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations.")
    threshold: float = Field(0.8, gt=0, lt=1, description="Jaccard similarity at which two records are duplicates.")
    keep: Literal["best_rated", "longest", "first"] = Field(
        "best_rated", description="Which record of a duplicate cluster is kept; ties broken by id.")
    seed: int = Field(1, description="Seed of the MinHash permutations.")
