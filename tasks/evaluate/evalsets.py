"""Eval items: prompts with references, from the curated eval split and from separate eval set files.

An item of the curated split is a record cut at its last assistant message: every turn before it is the
prompt, that message is the reference, and ``meta[family_field]`` (``meta.task``) is its task family. An eval
set file (JSONL or Parquet) has one row per item: a prompt (a string, or a list of ``{role, content}``
messages), a reference string and optionally a family. Rows that cannot be items are counted by reason,
never dropped silently.
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import fsspec
import pyarrow as pa

from schemas.evaluate import HELDOUT, EvalConfig, EvalSetConfig
from schemas.ingest import IngestConfig
from tasks.core import storage
from tasks.core.stage import iter_batches
from tasks.ingest.readers import NoHash, SourceStats, read_file


@dataclass
class EvalItem:
    id: str
    prompt: list[dict]  # the conversation up to the answer, [{role, content}]
    reference: str
    family: str | None = None


@dataclass
class EvalSet:
    name: str
    items: list[EvalItem]
    skipped: Counter = field(default_factory=Counter)  # reason -> rows that could not be items
    source: str = ""
    rows: int = 0  # rows read, before the cap and the skips

    def texts(self) -> list[str]:
        """Prompt and reference text of every item, one text each (what the leak check compares)."""
        return ["\n".join([m["content"] for m in it.prompt] + [it.reference]) for it in self.items]


def _family(meta: object, key: str | None) -> str | None:
    if not key:
        return None
    if isinstance(meta, str):
        try:
            meta = json.loads(meta) if meta else {}
        except json.JSONDecodeError:
            return None
    value = meta.get(key) if isinstance(meta, dict) else None
    return None if value is None or value == "" else str(value)


def record_item(record_id: str, messages: list[dict] | None, meta: object, family_field: str | None
                ) -> EvalItem | str:
    """A record as an item, or the reason it cannot be one."""
    msgs = [{"role": m.get("role") or "", "content": m.get("content") or ""} for m in (messages or []) if m]
    last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
    if last is None or not msgs[last]["content"].strip():
        return "no_assistant_answer"
    if last == 0:
        return "no_prompt_before_answer"
    return EvalItem(record_id, msgs[:last], msgs[last]["content"], _family(meta, family_field))


def heldout_set(records_dir: Path, family_field: str | None, limit: int | None) -> EvalSet:
    """The curated eval split as items, in id order (stable however it is sharded), at most ``limit``."""
    rows, skipped = [], Counter()
    n = 0
    for batch in iter_batches(records_dir, columns=["id", "messages", "meta"]):
        for rid, msgs, meta in zip(*(batch.column(c).to_pylist() for c in ("id", "messages", "meta")),
                                   strict=True):
            n += 1
            item = record_item(rid, msgs, meta, family_field)
            if isinstance(item, str):
                skipped[item] += 1
            else:
                rows.append(item)
    rows.sort(key=lambda it: it.id)
    if limit is not None and len(rows) > limit:
        skipped["over_max_items"] += len(rows) - limit
        rows = rows[:limit]
    return EvalSet(HELDOUT, rows, skipped, str(records_dir), n)


def read_rows(path: Path) -> list[dict]:
    """Rows of an eval set file as dicts, read by ingest's readers (JSON lines or a JSON array, CSV, Parquet,
    compressed or not); a row that does not parse, or is not an object, becomes {'__error__': why}. Blank
    lines are not rows."""
    rows = []
    for row in read_file(fsspec.filesystem("file"), str(path), SourceStats(hasher=NoHash()),
                         IngestConfig.model_fields["max_record_bytes"].default):
        if row.error is not None:
            if row.error.reason != "blank_line":
                rows.append({"__error__": f"{row.location}: {row.error.reason}: {row.error.detail}"})
        elif isinstance(row.value, dict):
            rows.append(row.value)
        else:
            rows.append({"__error__": f"{row.location}: not an object"})
    return rows


def _prompt(value: object) -> list[dict] | None:
    if isinstance(value, str):
        return [{"role": "user", "content": value}] if value.strip() else None
    if isinstance(value, list) and value and all(isinstance(m, dict) and isinstance(m.get("content"), str)
                                                 and m.get("role") in ("system", "user", "assistant")
                                                 for m in value):
        return [{"role": m["role"], "content": m["content"]} for m in value]
    return None


def file_set(cfg: EvalSetConfig, limit: int | None) -> EvalSet:
    """An eval set file as items, in file order, at most ``min(cfg.limit, limit)``. Raises FileNotFoundError
    naming the config key when the file is missing (a typo must not quietly shrink the evaluation)."""
    path = storage.local_file(cfg.path)  # an s3:// set: this machine's copy
    if not path.is_file():
        raise FileNotFoundError(f"evaluate.eval_sets[{cfg.name}].path: no file {cfg.path}")
    items, skipped = [], Counter()
    rows = read_rows(path)
    for i, row in enumerate(rows):
        if "__error__" in row:
            skipped["unreadable_row"] += 1
            continue
        prompt, reference = _prompt(row.get(cfg.prompt_field)), row.get(cfg.reference_field)
        if prompt is None:
            skipped[f"no_{cfg.prompt_field}"] += 1
        elif not isinstance(reference, str) or not reference.strip():
            skipped[f"no_{cfg.reference_field}"] += 1
        else:
            family = row.get(cfg.family_field) if cfg.family_field else None
            items.append(EvalItem(str(row.get("id", f"{cfg.name}-{i}")), prompt, reference,
                                  None if family in (None, "") else str(family)))
    cap = min(x for x in (cfg.limit, limit, len(items)) if x is not None)
    if len(items) > cap:
        skipped["over_max_items"] += len(items) - cap
        items = items[:cap]
    shown = cfg.path if storage.is_remote(cfg.path) else str(path.resolve())
    return EvalSet(cfg.name, items, skipped, shown, len(rows))


def items_table(es: EvalSet) -> pa.Table:
    """The items as an Arrow table (prompt as JSON), for MLflow's dataset input and digest."""
    return pa.table({"id": [it.id for it in es.items],
                     "prompt": [json.dumps(it.prompt, ensure_ascii=False) for it in es.items],
                     "reference": [it.reference for it in es.items],
                     "family": [it.family for it in es.items]})


def eval_sets_digest(cfg: EvalConfig) -> str:
    """Digest of the eval set files' bytes: a changed file must not reuse a cached evaluation."""
    h = hashlib.sha256()
    for s in cfg.eval_sets:
        path = storage.local_file(s.path)
        h.update(s.name.encode() + b"\0" + (path.read_bytes() if path.is_file() else b"<missing>"))
    return h.hexdigest()[:16]
