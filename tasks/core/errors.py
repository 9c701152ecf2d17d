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


_quiet_installed = False


def quiet_tracebacks(debug: bool = False) -> None:
    """Log an exception as one line instead of a traceback (Prefect logs every failed task and flow run with
    one), unless ``debug``. Installed once per process as a log record factory, so it covers every logger."""
    global _quiet_installed
    if debug or _quiet_installed:
        return
    import logging

    previous = logging.getLogRecordFactory()

    def factory(*args, **kwargs) -> logging.LogRecord:  # noqa: ANN002, ANN003 - LogRecord's own signature
        record = previous(*args, **kwargs)
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            try:
                message = record.getMessage()
            except Exception:  # noqa: BLE001 - a broken format string is the logger's problem
                message = str(record.msg)
            if str(exc)[:80] not in message:  # Prefect's own line often quotes the exception already
                message = f"{message.rstrip(': ')}: {type(exc).__name__}: {exc}"
            record.msg, record.args = message, ()
            record.exc_info, record.exc_text = None, None
        return record

    logging.setLogRecordFactory(factory)
    _quiet_installed = True


# Where the last curation stage counts its training and held-out items: the split counts records, the
# preference stage pairs (DPO) or labelled examples (KTO).
TRAIN_EVAL_KEYS = (("train", "eval"), ("train_pairs", "eval_pairs"), ("train_examples", "eval_examples"))


def train_eval_keys(extra: dict) -> tuple[str, str]:
    """The names under which the last curation stage's ledger extras count training and held-out items."""
    return next(((t, e) for t, e in TRAIN_EVAL_KEYS if t in extra), TRAIN_EVAL_KEYS[0])


def train_eval_counts(extra: dict) -> tuple[int, int]:
    """(training, held-out) items of the last curation stage's ledger extras, whichever kind it counts."""
    train_key, eval_key = train_eval_keys(extra)
    return int(extra.get(train_key, 0) or 0), int(extra.get(eval_key, 0) or 0)


def require_train_records(stages: list) -> None:
    """NothingToTrainError unless the last curation stage (split, or preference) holds training items; the
    message carries every stage's counts per reason, so it says where the records went."""
    extra = stages[-1].ledger.extra
    train_key, eval_key = train_eval_keys(extra)
    if not extra.get(train_key, 0):
        funnel = funnel_text({s.name: s.ledger.to_dict() for s in stages})
        raise NothingToTrainError(f"nothing left to train on: nothing reached training in {stages[-1].name} "
                                  f"({train_key}={extra.get(train_key, 0)}, {eval_key}={extra.get(eval_key, 0)}). "
                                  f"Where they went: {funnel}")


def require_tokenized(tokenized: object, eval_fraction: float) -> None:
    """NothingToTrainError when tokenization left no training or no evaluation rows (the eval loss of an
    empty eval set is NaN); the message carries the tokenizer's counts per reason."""
    led = tokenized.ledger  # type: ignore[attr-defined]
    extra = led.extra
    funnel = funnel_text({"tokenize": led.to_dict()})
    if not extra.get("train_records", 0):
        raise NothingToTrainError(f"nothing left to train on: the tokenizer rejected every training record "
                                  f"({funnel}); check tokenize.max_seq_len, tokenize.overlong and the chat template")
    if not extra.get("eval_records", 0):
        raise NothingToTrainError(f"nothing to evaluate on: no eval record is left after tokenization ({funnel}); "
                                  f"the eval loss would be NaN. Add records or raise split.eval_fraction "
                                  f"(now {eval_fraction})")
