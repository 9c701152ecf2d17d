"""Shared pydantic base: every config section forbids unknown keys, so typos fail before any work starts."""
from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, PlainSerializer, SerializationInfo


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # Settings that change only how fast the same output is made (workers, batch sizes, memory budgets): they
    # stay out of the stage's cache key, so changing them reuses the finished output instead of redoing it.
    SPEED_ONLY: ClassVar[tuple[str, ...]] = ()

    def cache_settings(self) -> dict[str, Any]:
        """This section as it enters a cache key: everything but ``SPEED_ONLY``."""
        return self.model_dump(mode="json", exclude=set(self.SPEED_ONLY))


URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.\-]*://[^/\s:@]+:)(?P<pw>[^@\s/]+)(?=@)")


def redact_url_passwords(text: str) -> str:
    """``scheme://user:password@host`` -> ``scheme://user:***@host``, wherever it occurs in ``text``."""
    return URL_PASSWORD.sub(lambda m: m["head"] + "***", text)


def _mask_in_json(value: str, info: SerializationInfo) -> str:
    return value if (info.context or {}).get("include_secrets") else redact_url_passwords(value)


# A string that may hold a URL with a password (an MLflow tracking URI). Its JSON form masks the password:
# that is the form Prefect records of a flow's config parameter, so the Prefect API, its UI and anything else
# dumped as JSON (MLflow params, config.yaml beside an adapter) never show it. The Python value keeps it;
# ``model_dump(mode="json", context={"include_secrets": True})`` keeps it too, for a config handed on whole.
UrlWithSecret = Annotated[str, PlainSerializer(_mask_in_json, when_used="json", return_type=str)]
