"""Config of tokenization: chat template, prompt masking, length policy and packing."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from schemas.base import StrictModel


class TokenizeConfig(StrictModel):
    max_seq_len: int = Field(512, ge=16, description="Longest sequence (and packed row) in tokens.")
    train_on: Literal["assistant", "all"] = Field("assistant", description="Which tokens carry a loss.")
    overlong: Literal["drop", "truncate"] = Field("drop", description="What happens to records over max_seq_len.")
    packing: bool = Field(True, description="Pack records into rows of max_seq_len (best-fit decreasing).")
    chat_template: str | None = Field(None, description="Jinja chat template used when the tokenizer has none.")
    num_proc: int = Field(1, ge=1, description="Processes for batched tokenization.")
