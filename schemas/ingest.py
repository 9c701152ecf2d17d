"""Config of the ingest stage: where the data comes from and how it maps to the record shape."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from schemas.base import StrictModel

Format = Literal["auto", "messages", "alpaca", "sharegpt", "prompt_completion", "text"]


class SourceConfig(StrictModel):
    name: str = Field(description="Short name of the source; part of every record id.")
    path: str = Field(description="Local file, glob or directory; 'hf:org/name' for a hub dataset; "
                                  "'disk:PATH' for a saved datasets folder; or an fsspec URL.")
    format: Format = Field("auto", description="Record layout preset; 'auto' guesses from the first row.")
    split: str = Field("train", description="Split of a hub or saved dataset.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    streaming: bool = Field(False, description="Stream a hub dataset instead of downloading it whole.")
    field_map: dict[str, str] = Field(default_factory=dict,
                                      description="Explicit mapping from record fields to source fields.")
    annotation_map: dict[str, str] = Field(default_factory=dict,
                                           description="Mapping of annotation fields (ratings, labels, "
                                                       "annotator ids) to source fields.")
    limit: int | None = Field(None, ge=1, description="Read at most this many rows from the source.")
    weight: float = Field(1.0, gt=0, description="Sampling weight of the source in the mix.")


class IngestConfig(StrictModel):
    sources: list[SourceConfig] = Field(min_length=1, description="The datasets to read.")
    shard_rows: int = Field(50_000, ge=1, description="Rows per output Parquet shard (bounds memory).")
    max_record_bytes: int = Field(1_000_000, ge=1, description="Rows larger than this are quarantined.")
