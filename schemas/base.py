"""Shared pydantic base: every config section forbids unknown keys, so typos fail before any work starts."""
from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # Settings that change only how fast the same output is made (workers, batch sizes, memory budgets): they
    # stay out of the stage's cache key, so changing them reuses the finished output instead of redoing it.
    SPEED_ONLY: ClassVar[tuple[str, ...]] = ()

    def cache_settings(self) -> dict[str, Any]:
        """This section as it enters a cache key: everything but ``SPEED_ONLY``."""
        return self.model_dump(mode="json", exclude=set(self.SPEED_ONLY))
