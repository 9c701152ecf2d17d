"""Config of exact and MinHash near-duplicate removal."""
from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from schemas.base import StrictModel


class DedupConfig(StrictModel):
    SPEED_ONLY: ClassVar[tuple[str, ...]] = ("workers", "unit_rows", "memory_mb", "partitions")  # see StrictModel.SPEED_ONLY
    exact: bool = Field(True, description="Drop records whose normalized text is identical.")
    near: bool = Field(True, description="Drop near-duplicates found with MinHash LSH.")
    text: Literal["prompt_response", "prompt", "response", "all"] = Field(
        "prompt_response", description="Which text is compared (schemas.record.TEXT_ROLES): prompt_response = user "
                                   "and assistant turns, prompt = user turns, response = assistant turns, all = "
                                   "every turn, system prompts included.")
    shingle: Literal["word", "char"] = Field("word", description="Word or character n-grams.")
    ngram: int = Field(5, ge=1, description="Shingle size in words or characters.")
    lowercase: bool = Field(True, description="Compare case-folded text.")
    strip_punct: bool = Field(True, description="Remove Unicode punctuation and symbols before shingling.")
    nfkc: bool = Field(True, description="Apply Unicode NFKC normalization before shingling.")
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations (upper bound on bands x rows).")
    threshold: float = Field(0.8, gt=0, lt=1, description="Jaccard similarity at which two records are duplicates.")
    bands: int | None = Field(None, ge=1, description="LSH bands; None picks them for recall at the threshold.")
    rows: int | None = Field(None, ge=1, description="LSH rows per band; None picks them with `bands`.")
    target_recall: float = Field(
        0.995, gt=0, lt=1, description="Probability that a pair exactly at the threshold becomes a candidate.")
    verify: Literal["jaccard", "signature", "none"] = Field(
        "jaccard", description="Check candidate pairs by exact Jaccard of shingle sets, by the signature "
                               "estimate, or not at all (raw LSH, as most tools do).")
    keep: Literal["best_rated", "longest", "first"] = Field(
        "best_rated", description="Which record of a duplicate cluster is kept; ties broken by id.")
    seed: int = Field(1, description="Seed of the MinHash permutations (datasketch's seed).")
    workers: int = Field(1, ge=1, description="Processes for shard-level work inside the stage.")
    unit_rows: int = Field(20_000, ge=100, description="Rows per unit of shard-level work.")
    memory_mb: int = Field(1024, ge=64, description="Memory budget of one banding partition or verify block.")
    partitions: int | None = Field(None, ge=1, description="Band-key partitions; None sizes them from memory_mb.")
    report_clusters: int = Field(10, ge=0, description="Largest clusters shown in the report.")

    @model_validator(mode="after")
    def _bands_rows(self) -> DedupConfig:
        if (self.bands is None) != (self.rows is None):
            raise ValueError("set both dedup.bands and dedup.rows, or neither")
        if self.bands is not None and self.rows is not None and self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands*rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}")
        return self
