"""One row as a reader hands it to the converter: a parsed value, or the error that kept it from parsing."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tasks.ingest.presets import RowError

RAW_CHARS = 2000  # how much of a bad row the quarantine keeps


@dataclass
class Row:
    """One row read from a source: a parsed object, or the error that kept it from parsing."""

    location: str
    value: Any = None
    raw: bytes | None = None  # the original bytes of a text row, for the quarantine
    error: RowError | None = None


def raw_text(raw: bytes | None, value: Any = None) -> str:
    """What the quarantine keeps of a bad row: its bytes (or its value as JSON), truncated."""
    if raw is not None:
        return raw[:RAW_CHARS * 4].decode("utf-8", errors="backslashreplace")[:RAW_CHARS]
    try:
        text = json.dumps(value, default=str, ensure_ascii=False)[:RAW_CHARS]
    except (TypeError, ValueError, RecursionError):
        text = repr(value)[:RAW_CHARS]
    return printable(text)


def printable(text: str) -> str:
    """``text`` with lone surrogates (undecodable bytes kept by a reader) spelled as escapes, so Arrow can
    store it."""
    return text.encode("utf-8", errors="backslashreplace").decode("utf-8")
