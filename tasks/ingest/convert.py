"""Rows to records: the per-row work of ingest, shared by the in-process path and the parallel workers.

A *part* is a run of rows converted in order by one ``RowConverter`` into its own shard files (prefix
``part-SSS-FFFFF-CCCCC``: source, first file, chunk), so file names sort in input order. A part holds either
one file, or (``shared``) several small plain files in a row; either way a file that fails while it is read
can be taken back whole (``abort_file``), so a corrupt file leaves no half of itself among the records. A part remembers the
64-bit id key of every record it kept (in compact arrays, not a Python set), and
``tasks.ingest.parallel.reconcile`` finds repeated ids afterwards, within and across parts, and repeated
contents across parts. No Prefect import here: worker processes start fast.
"""
from __future__ import annotations

import hashlib
from array import array
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from schemas.ingest import IngestConfig, SourceConfig
from schemas.record import QUARANTINE_SCHEMA, RECORD_SCHEMA
from tasks.core.stage import ShardWriter
from tasks.ingest.presets import (
    PREFERENCE_PRESETS,
    RowError,
    convert_row,
    detect_format,
    dumps,
    explode_row,
    resolve_fields,
)
from tasks.ingest.rows import Row, printable, raw_text

# Rows are buffered as Python objects (several times their JSON size) until this many rows or input bytes,
# then go to the shard writer: this, not the input size, bounds a converter's memory.
FLUSH_ROWS = 8192
FLUSH_BYTES = 4 << 20
DETECT_ROWS = 100  # format auto: how many leading rows may be looked at to pick the preset


def _sha1(*parts: str) -> str:
    return hashlib.sha1("\x1f".join(parts).encode("utf-8", errors="surrogatepass")).hexdigest()


def record_id(source: str, raw_id: str | int) -> str:
    """The stable id of a row that brought its own id; an integer id hashes apart from the same digits as a
    string, so ``7`` and ``"7"`` are two records."""
    if isinstance(raw_id, int):
        return _sha1(source, "int_id", str(raw_id))[:20]
    return _sha1(source, "id", raw_id)[:20]


def content_key(messages: list[dict]) -> int:
    """64 bits of the SHA-1 of a conversation, the key under which identical id-less rows are counted."""
    return int.from_bytes(hashlib.sha1(dumps(messages).encode()).digest()[:8], "big")


def content_record_id(source: str, key: int, occurrence: int) -> str:
    """The stable id of a row without an id: its content, and how many identical rows came before it."""
    return _sha1(source, "content", f"{key:016x}", str(occurrence))[:20]


def id_key(rid: str) -> int:
    return int(rid[:16], 16)


def detect_preset(rows: Iterable[Row], fields: dict[str, Any]) -> str | None:
    """The preset of the first of the leading rows that fits one; None if none of them does."""
    for i, row in enumerate(rows):
        if i >= DETECT_ROWS:
            break
        if row.error is None and isinstance(row.value, dict) and (preset := detect_format(row.value, fields)):
            return preset
    return None


@dataclass
class PartResult:
    """What one part kept and dropped, plus the keys that cross-part reconciliation needs."""

    prefix: str
    n_in: int = 0
    kept: int = 0
    n_lines: int = 0  # text-file parts: lines read, to turn local line numbers into global ones
    dropped: Counter = field(default_factory=Counter)
    fields: dict[str, str] = field(default_factory=dict)
    preset: str | None = None
    # keys that look like annotations but are not mapped (tasks.ingest.presets.build_annotations), counted
    unmapped: Counter = field(default_factory=Counter)
    # kept rows that brought an id: their position among the part's kept rows, id key, location
    id_pos: array = field(default_factory=lambda: array("q"))
    id_keys: array = field(default_factory=lambda: array("Q"))
    # their location, "path:" or "path#" (interned in `where`) plus the line or row number
    id_where: array = field(default_factory=lambda: array("I"))
    id_number: array = field(default_factory=lambda: array("q"))
    where: list[str] = field(default_factory=list)
    where_index: dict[str, int] = field(default_factory=dict)
    line_offset: int = 0  # added to the line numbers of a chunk of a split file
    # kept rows without an id: position, content key, occurrence counted inside the part
    content_pos: array = field(default_factory=lambda: array("q"))
    content_keys: array = field(default_factory=lambda: array("Q"))
    content_occurrence: array = field(default_factory=lambda: array("q"))


class RowConverter:
    """Converts one part's rows, keeping records and quarantining bad rows into the part's shard files.

    Rows come file by file: ``begin_file``, ``add``..., then ``end_file`` or ``abort_file``. A shared part
    writes to its shards only between files, so aborting a file only drops rows held in memory; a part of
    one file is discarded whole, with any shards it flushed.
    """

    def __init__(self, src: SourceConfig, cfg: IngestConfig, out: Path, prefix: str, preset: str | None,
                 shared: bool = False):
        self.src, self.cfg, self.out, self.max_bytes = src, cfg, out, cfg.max_record_bytes
        self.fields = resolve_fields(src.field_map)
        self.amap = src.annotation_map
        self.scale = tuple(src.rating_scale) if src.rating_scale is not None else None
        self.shared = shared
        self.preset = preset
        self._fresh(prefix, preset)

    def _fresh(self, prefix: str, preset: str | None) -> None:
        self.result = PartResult(prefix, preset=preset)
        self.data = ShardWriter(self.out / "data", RECORD_SCHEMA, self.cfg.shard_rows, prefix=prefix)
        self.rejects = ShardWriter(self.out / "rejects", QUARANTINE_SCHEMA, self.cfg.shard_rows, prefix=prefix)
        self.records: dict[str, list] = {n: [] for n in RECORD_SCHEMA.names}
        self.bad: dict[str, list] = {n: [] for n in QUARANTINE_SCHEMA.names}
        self.buffered = 0  # approximate input bytes of the buffered records
        self.occurrences: dict[int, int] = {}
        self._mark: tuple | None = None
        self._flushed = False  # since the mark
        self._new_keys: list[int] = []  # content keys counted since the mark

    # ------------------------------------------------------------------ file boundaries

    def begin_file(self, preset: str | None) -> None:
        """Start a file's rows, read under ``preset`` (None: each row's own layout, until one fits)."""
        r = self.result
        self.preset = preset
        if r.preset is None:
            r.preset = preset
        self._mark = (len(self.records["id"]), len(self.bad["source"]), r.n_in, r.kept, Counter(r.dropped),
                      Counter(r.unmapped), self.buffered, not r.fields,
                      [len(a) for a in (r.id_pos, r.id_keys, r.id_where, r.id_number, r.content_pos,
                                        r.content_keys, r.content_occurrence)])
        self._flushed = False
        self._new_keys = []

    def end_file(self) -> None:
        self._mark = None
        if self.shared and self._due():
            self.flush()

    def abort_file(self) -> None:
        """Take back every row of the current file (its kept records and its rejects)."""
        assert self._mark is not None, "abort_file without begin_file"
        n_rec, n_bad, n_in, kept, dropped, unmapped, buffered, no_fields, sizes = self._mark
        r = self.result
        if not self.shared:  # a part of one file: discard it whole, shards and all
            self.data.discard()
            self.rejects.discard()
            self._fresh(r.prefix, r.preset)
            return
        assert not self._flushed, "a shared part flushed inside a file"
        for column in self.records.values():
            del column[n_rec:]
        for column in self.bad.values():
            del column[n_bad:]
        r.n_in, r.kept, r.dropped, r.unmapped, self.buffered = n_in, kept, dropped, unmapped, buffered
        if no_fields:
            r.fields = {}
        for arr, n in zip((r.id_pos, r.id_keys, r.id_where, r.id_number, r.content_pos, r.content_keys,
                           r.content_occurrence), sizes, strict=True):
            del arr[n:]
        for key in self._new_keys:
            self.occurrences[key] -= 1
        self._mark = None

    def _due(self) -> bool:
        return len(self.records["id"]) >= FLUSH_ROWS or self.buffered >= FLUSH_BYTES or \
            len(self.bad["source"]) >= FLUSH_ROWS

    # ------------------------------------------------------------------ rows

    def add(self, row: Row) -> None:
        if self._add_responses(row):
            return
        r = self.result
        r.n_in += 1
        try:
            rid, key, occurrence, messages, annotations, meta = self._convert(row)
        except RowError as err:
            self._quarantine(row, err)
            return
        except Exception as exc:  # noqa: BLE001 - a row must never crash the run; keep it with the error
            self._quarantine(row, RowError("unreadable_row", f"{type(exc).__name__}: {str(exc)[:200]}"))
            return
        if occurrence < 0:
            r.id_pos.append(r.kept)
            r.id_keys.append(key)
            cut = max(row.location.rfind(":"), row.location.rfind("#")) + 1
            where = row.location[:cut]
            if where not in r.where_index:
                r.where_index[where] = len(r.where)
                r.where.append(where)
            r.id_where.append(r.where_index[where])
            r.id_number.append(int(row.location[cut:]))
        else:
            r.content_pos.append(r.kept)
            r.content_keys.append(key)
            r.content_occurrence.append(occurrence)
        rec = self.records
        rec["id"].append(rid)
        rec["source"].append(self.src.name)
        rec["messages"].append(messages)
        rec["annotations"].append(annotations)
        rec["meta"].append(meta)
        r.kept += 1
        self.buffered += len(row.raw) if row.raw is not None else 512
        if not self.shared and self._due():
            self.flush()

    def _add_responses(self, row: Row) -> bool:
        """Preference layouts: each response of the row becomes a record of its own (and counts as one row in
        the ledger); a row that cannot be split is quarantined once. False for rows of the other presets."""
        r = self.result
        if row.error is not None or not isinstance(row.value, dict):
            return False
        preset = self.preset or detect_format(row.value, self.fields)
        if preset not in PREFERENCE_PRESETS:
            return False
        self.preset = preset  # the file's layout, as its first row showed it
        if r.preset is None:
            r.preset = preset
        try:
            responses = explode_row(row.value, preset, self.fields)
        except RowError as err:
            r.n_in += 1
            self._quarantine(row, err)
            return True
        # Each response is a prompt_completion row with canonical annotations (explode_row built them).
        saved = self.preset, self.amap
        self.preset, self.amap = "prompt_completion", {k: v for k, v in self.amap.items()
                                                       if k in ("annotator_id", "rating", "labels")}
        try:
            for value in responses:
                self.add(Row(row.location, value))
        finally:
            self.preset, self.amap = saved
        return True

    def _convert(self, row: Row) -> tuple[str, int, int, list, list, str]:
        if row.error is not None:
            raise row.error
        value, r = row.value, self.result
        if not r.fields and isinstance(value, dict):
            r.fields = {str(k): type(v).__name__ for k, v in value.items()}
        preset = self.preset
        if preset is None:  # no leading row of the file fitted a preset: each row is read by its own layout
            if not isinstance(value, dict):
                raise RowError("not_an_object", f"a row must be a JSON object, got {type(value).__name__}")
            preset = detect_format(value, self.fields)
            if preset is None:
                raise RowError("unknown_format", f"fields {sorted(map(str, value))[:8]} match no preset")
        raw_id, messages, annotations, meta = convert_row(value, preset, self.fields, self.amap, self.scale,
                                                          r.unmapped)
        if row.raw is None:  # text rows were size-checked before parsing
            size = len(meta) + sum(len(m["content"]) for m in messages)
            if size > self.max_bytes:
                raise RowError("oversize", f"about {size} bytes > {self.max_bytes}")
        if raw_id is not None:
            rid = record_id(self.src.name, raw_id)
            key = id_key(rid)
            return rid, key, -1, messages, annotations, meta
        key = content_key(messages)
        k = self.occurrences.get(key, 0)
        self.occurrences[key] = k + 1
        if self.shared and self._mark is not None:  # a shared part may have to take this file back
            self._new_keys.append(key)
        return content_record_id(self.src.name, key, k), key, k, messages, annotations, meta

    def _quarantine(self, row: Row, err: RowError) -> None:
        self.result.dropped[err.reason] += 1
        b = self.bad
        b["source"].append(self.src.name)
        b["location"].append(printable(row.location))
        b["reject_reason"].append(err.reason)
        b["reject_detail"].append(printable(err.detail))
        b["raw"].append(raw_text(row.raw, row.value))
        if not self.shared and len(b["source"]) >= FLUSH_ROWS:
            self.flush()

    def flush(self) -> None:
        self.buffered = 0
        if self.records["id"]:
            self.data.write(pa.Table.from_pydict(self.records, schema=RECORD_SCHEMA))
            self.records = {n: [] for n in RECORD_SCHEMA.names}
            self._flushed = True
        if self.bad["source"]:
            self.rejects.write(pa.Table.from_pydict(self.bad, schema=QUARANTINE_SCHEMA))
            self.bad = {n: [] for n in QUARANTINE_SCHEMA.names}
            self._flushed = True

    def close(self) -> PartResult:
        self.flush()
        for writer in (self.data, self.rejects):
            writer.close()
            if writer.rows == 0:  # only shards with rows: ingest adds one empty shard if all parts are empty
                for empty in writer.directory.glob(f"{writer.prefix}-*.parquet"):
                    empty.unlink()
        return self.result
