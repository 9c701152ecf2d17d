"""Helpers of the ingest tests."""
from __future__ import annotations

from pathlib import Path

from tasks.core.stage import read_table


def records(directory: Path) -> list[dict]:
    """The records of a shard directory, with the (usually null) message weights left out unless set."""
    rows = read_table(directory).to_pylist()
    for r in rows:
        r["messages"] = [{k: v for k, v in m.items() if k != "weight" or v is not None} for m in r["messages"]]
    return rows
