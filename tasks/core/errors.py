"""The errors a user can cause and fix, each with one clear message and its own exit code.

The CLI prints such an error as one line (``peftpipe: MESSAGE``) and exits with ``exit_code``; Prefect's logs
show it without a traceback (``tasks.core.recovery.install_log_scrubber``). Anything else is a bug, and keeps
its traceback. The README's exit-code table lists these codes.
"""
from __future__ import annotations

from collections.abc import Mapping


class PeftpipeError(RuntimeError):
    """Base of the errors that end a run with a clear message instead of a traceback."""

    exit_code = 1


class SourceError(PeftpipeError):
    """A data source that cannot be used at all: missing, yielding no rows, or (with
    ``ingest.unreadable_files: fail``) holding a file that cannot be read."""

    exit_code = 6


class NothingToTrainError(PeftpipeError):
    """The data ran out before training: every record was dropped by some stage, the split left no training
    (or no evaluation) rows, or the tokenizer rejected everything. The message carries the counts."""

    exit_code = 7


def funnel_text(ledgers: Mapping[str, Mapping]) -> str:
    """'ingest: in=10 kept=0 (invalid_json=4, bad_role=6); dedup: ...' from stage name -> ledger dicts."""
    parts = []
    for stage, led in ledgers.items():
        dropped = led.get("dropped") or {}
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(dropped.items(), key=lambda kv: -kv[1]))
        parts.append(f"{stage}: in={led.get('in', 0)} kept={led.get('kept', 0)}" + (f" ({reasons})" if reasons else ""))
    return "; ".join(parts)
