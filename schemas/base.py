"""Shared pydantic base: every config section forbids unknown keys, so typos fail before any work starts."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
