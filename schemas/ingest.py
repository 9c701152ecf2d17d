"""Config of the ingest stage: where the data comes from and how it maps to the record shape."""
from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from schemas.base import StrictModel

# chosen_rejected / rated_completions: preference layouts, one record per response (tasks.ingest.presets).
Format = Literal["auto", "messages", "alpaca", "sharegpt", "prompt_completion", "text", "chosen_rejected",
                 "rated_completions"]

# Record-side names that field_map may point at source fields (dotted paths reach into nested objects).
FIELD_KEYS = frozenset({"id", "meta", "messages", "role", "content", "system", "instruction", "input", "output",
                        "prompt", "completion", "text", "chosen", "rejected", "completions", "weight"})
# annotation_map keys: either a list of per-annotator objects ("annotations" with the keys inside each
# object), or flat per-row fields ("ratings", parallel "annotator_ids" and "label_lists").
ANNOTATION_KEYS = frozenset({"annotations", "annotator_id", "rating", "labels", "ratings", "annotator_ids",
                             "label_lists"})


class SourceConfig(StrictModel):
    name: str = Field(description="Short name of the source; part of every record id.")
    path: str = Field(description="Local file, glob or directory; 'hf:org/name' for a hub dataset; "
                                  "'disk:PATH' for a saved datasets folder; or an fsspec URL.")
    format: Format = Field("auto", description="Record layout preset; 'auto' guesses it per file, from the "
                                                "file's first rows (the lineage lists what each file got).")
    split: str = Field("train", description="Split of a hub or saved dataset.")
    subset: str | None = Field(None, description="Config (subset) name of a hub dataset.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit); pin it so reruns "
                                                   "reuse the ingest output.")
    streaming: bool = Field(False, description="Stream a hub dataset instead of downloading it whole.")
    field_map: dict[str, str] = Field(default_factory=dict,
                                      description="Explicit mapping from record fields to source fields, "
                                                  f"e.g. {{prompt: question}}. Keys: {sorted(FIELD_KEYS)}.")
    annotation_map: dict[str, str] = Field(default_factory=dict,
                                           description="Mapping of annotation fields (ratings, labels, "
                                                       "annotator ids) to source fields. Keys: "
                                                       f"{sorted(ANNOTATION_KEYS)}.")
    limit: int | None = Field(None, ge=1, description="Read at most this many rows from the source.")
    weight: float = Field(1.0, gt=0, description="Sampling weight of the source in the mix (recorded in the "
                                                 "lineage; ingest itself keeps every row).")
    rating_scale: tuple[float, float] | None = Field(
        None, description="Declared [lowest, highest] rating of this source, e.g. [1, 5]. A rating outside it "
                          "quarantines its row (reason rating_out_of_scale); the scale is kept in each "
                          "record's meta.rating_scale so filters can work on the normalized 0-1 scale.")

    @field_validator("rating_scale")
    @classmethod
    def _scale_ordered(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not (v[0] < v[1] and all(x == x and abs(x) != float("inf") for x in v)):
            raise ValueError(f"rating_scale must be [lowest, highest] with lowest < highest, got {list(v)}")
        return v

    @field_validator("name")
    @classmethod
    def _name_is_plain(cls, v: str) -> str:
        if not v or not v.strip() or "\x1f" in v:
            raise ValueError("source name must be a non-empty string")
        return v

    @field_validator("field_map")
    @classmethod
    def _known_fields(cls, v: dict[str, str]) -> dict[str, str]:
        if unknown := sorted(set(v) - FIELD_KEYS):
            raise ValueError(f"unknown field_map keys {unknown}; allowed: {sorted(FIELD_KEYS)}")
        return v

    @field_validator("annotation_map")
    @classmethod
    def _known_annotation_fields(cls, v: dict[str, str]) -> dict[str, str]:
        if unknown := sorted(set(v) - ANNOTATION_KEYS):
            raise ValueError(f"unknown annotation_map keys {unknown}; allowed: {sorted(ANNOTATION_KEYS)}")
        return v


class IngestConfig(StrictModel):
    SPEED_ONLY: ClassVar[tuple[str, ...]] = ("workers",)  # see StrictModel.SPEED_ONLY
    sources: list[SourceConfig] = Field(min_length=1, description="The datasets to read.")
    shard_rows: int = Field(50_000, ge=1, description="Rows per output Parquet shard (bounds memory).")
    max_record_bytes: int = Field(1_000_000, ge=1, description="Rows larger than this are quarantined.")
    workers: int = Field(0, ge=0, description="Processes that convert one big JSON-lines file in parallel; "
                                              "0 = one per CPU core, 1 = in-process only. The output "
                                              "(ids, order, quarantine) does not depend on it.")
    parallel_min_bytes: int = Field(64 << 20, ge=1, description="Files smaller than this are read in-process.")
    unreadable_files: Literal["quarantine", "fail"] = Field(
        "quarantine", description="A file that cannot be read (corrupt, truncated, not what its name says, a "
                                  "FIFO, socket or dangling link): 'quarantine' keeps it as one reject with the "
                                  "reason and its path and reads the rest of the source; 'fail' stops the run "
                                  "with exit 6 naming the file.")

    @model_validator(mode="after")
    def _unique_names(self) -> IngestConfig:
        names = [s.name for s in self.sources]
        if dupes := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"source names must be unique (they are part of record ids): {dupes}")
        return self
