"""Readers: every kind of source as one stream of ``Row``s, in bounded memory, hashing what they read.

A source is a local file, glob or directory, an fsspec URL, ``hf:NAME`` (``datasets.load_dataset``) or
``disk:PATH`` (``datasets.load_from_disk``); ``tasks.ingest.listing`` says which files it names. Files are read
by extension (compression suffixes such as .gz are undone by fsspec): .jsonl/.ndjson/.json (JSON lines, or
JSON documents), .csv/.tsv (``tasks.ingest.csv_reader``), .parquet, .txt (one text per line). Text lines are
numbered from 1 (``path:LINE``), table rows and array elements from 0 (``path#ROW``).

JSON lines are cut out of fixed-size blocks, so memory stays bounded by the block size plus
``max_record_bytes`` whatever the input; a longer line is skipped to its end and reported as ``oversize``.
A JSON file whose first record spans several lines (a pretty-printed array or object, whatever the
extension) is read as a document instead: each array element or top-level value is one record, so the
ledger counts records, not lines. Export quirks read as their authors meant: a UTF-8 byte-order mark is
dropped, and ``NaN`` / ``Infinity`` (Python's ``json.dumps`` writes them) parse as numbers.

A reader raises when the file itself is bad (not gzip, cut short, not Parquet, an I/O error); ingest then
quarantines the whole file (``tasks.ingest.stage``). Row-level problems come back as ``Row.error``.
"""
from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import fsspec

from schemas.ingest import SourceConfig
from tasks.ingest.csv_reader import read_csv_file
from tasks.ingest.listing import COMPRESSIONS, CSV_EXT, JSON_EXT, PARQUET_EXT, TEXT_EXT, IngestError, is_local
from tasks.ingest.presets import RowError
from tasks.ingest.rows import RAW_CHARS, Row, raw_text

try:
    from orjson import JSONDecodeError as _OrjsonError
    from orjson import dumps as _dumps
    from orjson import loads as _loads
    _JSON_ERRORS: tuple[type[Exception], ...] = (_OrjsonError, ValueError, RecursionError)
except ImportError:  # pragma: no cover
    _loads = json.loads
    _JSON_ERRORS = (ValueError, RecursionError)

    def _dumps(obj: Any) -> bytes:
        return json.dumps(obj, allow_nan=False).encode("utf-8")

__all__ = ["BLOCK_BYTES", "IngestError", "Row", "SourceStats", "file_kind", "json_layout", "raw_text",
           "read_file", "read_hf", "read_json_file"]

BLOCK_BYTES = 1 << 22
HEAD_BYTES = RAW_CHARS * 4
BOM = b"\xef\xbb\xbf"
_NONFINITE = re.compile(rb"NaN|Infinity")
_WS = " \t\r\n"


class NoHash:
    """A hasher that hashes nothing: for bytes already hashed, or hashed by another process."""

    def update(self, _: bytes) -> None:
        pass


@dataclass
class SourceStats:
    """What a reader saw of its source: the files, a digest of every byte or row read, the fields.

    A file source is hashed file by file (``start_file`` / ``end_file``) and its digest combines the
    per-file digests in file order, so files read in parallel, on any runner, give the digest a sequential
    read gives. A hub source's rows go into the one ``hasher``."""

    files: list[str] = field(default_factory=list)
    hasher: Any = field(default_factory=hashlib.sha256)
    fields: dict[str, str] = field(default_factory=dict)
    bytes_read: int = 0
    lines: int = 0
    file_digests: list[str] = field(default_factory=list)

    def note_fields(self, row: Any) -> None:
        if not self.fields and isinstance(row, dict):
            self.fields = {str(k): type(v).__name__ for k, v in row.items()}

    def start_file(self) -> None:
        self.hasher = hashlib.sha256()

    def end_file(self) -> None:
        self.file_digests.append(self.hasher.hexdigest())

    def digest(self) -> str:
        if not self.file_digests:
            return self.hasher.hexdigest()
        return hashlib.sha256("\n".join(self.file_digests).encode()).hexdigest()

    def merge(self, other: dict[str, Any]) -> None:
        """Add what another reader saw of later files of the same source (``as_dict`` of its stats)."""
        self.files += other["files"]
        self.fields = self.fields or other["fields"]
        self.bytes_read += other["bytes_read"]
        self.lines += other["lines"]
        self.file_digests += other["file_digests"]

    def as_dict(self) -> dict[str, Any]:
        return {"files": self.files, "fields": self.fields, "bytes_read": self.bytes_read, "lines": self.lines,
                "file_digests": self.file_digests}


def _strip_compression(name: str) -> str:
    for suffix in COMPRESSIONS:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def file_kind(path: str) -> str:
    name = _strip_compression(path.lower())
    for kind, exts in (("json", JSON_EXT), ("csv", CSV_EXT), ("parquet", PARQUET_EXT), ("text", TEXT_EXT)):
        if name.endswith(exts):
            return kind
    return "json"  # an explicitly named file of unknown type is read as JSON lines


# --------------------------------------------------------------------------- JSON

def _clean(value: Any) -> bool:
    """Whether a value parsed by the permissive stdlib decoder can be stored: no lone surrogates, no integers
    past 64 bits (orjson, which writes the records, refuses both)."""
    try:
        _dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def parse_json_line(line: bytes, location: str) -> Row:
    try:
        return Row(location, _loads(line), line)
    except _JSON_ERRORS as exc:
        if _NONFINITE.search(line):  # NaN / Infinity: not JSON, but what Python's json.dumps writes
            try:
                value = json.loads(line)
                if _clean(value):
                    return Row(location, value, line)
            except (ValueError, RecursionError):
                pass
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as bad:
            return Row(location, None, line, RowError("invalid_utf8", f"byte {bad.start}: {bad.reason}"))
        return Row(location, None, line, RowError("invalid_json", str(exc)[:200]))


def iter_lines(f: io.BufferedIOBase, stats: SourceStats, max_bytes: int, length: int | None = None,
               head: bytes = b"", first_line: int = 1) -> Iterator[tuple[int, bytes, bool]]:
    """(line number, line, too long) for each line of ``head`` (already read and hashed) and then of the next
    ``length`` bytes of ``f`` (all by default); a line longer than ``max_bytes`` comes back as its head only,
    and is never held whole in memory."""
    def blocks() -> Iterator[bytes]:
        if head:
            yield head
        left = -1 if length is None else length
        while left and (block := f.read(BLOCK_BYTES if left < 0 else min(BLOCK_BYTES, left))):
            left -= len(block) if left > 0 else 0
            stats.hasher.update(block)
            stats.bytes_read += len(block)
            yield block

    carry, lineno, skipping = b"", first_line - 1, False
    for block in blocks():
        lines = (carry + block).split(b"\n")
        carry = lines.pop()
        for line in lines:
            if skipping:  # the tail of an oversize line, already reported
                skipping = False
                continue
            lineno += 1
            yield (lineno, line, False) if len(line) <= max_bytes else (lineno, line[:HEAD_BYTES], True)
        if len(carry) > max_bytes:
            if not skipping:
                lineno += 1
                yield lineno, carry[:HEAD_BYTES], True
            carry, skipping = b"", True
    if carry and not skipping:
        lineno += 1
        yield (lineno, carry, False) if len(carry) <= max_bytes else (lineno, carry[:HEAD_BYTES], True)
    stats.lines += lineno - first_line + 1


def json_layout(head: bytes, path: str) -> str:
    """'document' when the first record spans lines (a pretty-printed array or object) or a .json file holds
    one array; 'lines' otherwise. ``head`` is the file's first block."""
    text = head[len(BOM):] if head.startswith(BOM) else head
    text = text.lstrip()
    if text[:1] not in (b"[", b"{"):
        return "lines"
    if text[:1] == b"[" and _strip_compression(path.lower()).endswith(".json"):
        return "document"
    first, newline, _ = text.partition(b"\n")
    if not newline:  # one long first line (or one line in all): JSON lines
        return "lines"
    return "lines" if parse_json_line(first.rstrip(b"\r"), "").error is None else "document"


def _skip_ws(text: str, pos: int) -> int:
    n = len(text)
    while pos < n and text[pos] in _WS:
        pos += 1
    return pos


def iter_json_document(data: bytes, path: str, max_bytes: int) -> Iterator[Row]:
    """The records of a JSON document: each element of a top-level array, each top-level value otherwise.

    A broken array element ends the array with one ``invalid_json`` row for the rest of it (elements before
    it are kept); a top-level value that does not parse sends the rest of the file to the JSON-lines reader,
    from its line on (so a file that only looked like a document reads exactly as JSON lines).
    """
    if data.startswith(BOM):
        data = data[len(BOM):]
    try:  # the common case, one well-formed array: orjson, fast
        whole = _loads(data)
    except _JSON_ERRORS:
        whole = None
    if isinstance(whole, list):
        for i, value in enumerate(whole):
            yield Row(f"{path}#{i}", value)
        return
    # Undecodable bytes become lone surrogates: the values holding them are rejected one by one below.
    text = data.decode("utf-8", errors="surrogateescape")
    decoder = json.JSONDecoder()
    pos, line, counted, element, counted_values = _skip_ws(text, 0), 1, 0, 0, 0
    while pos < len(text):
        line += text.count("\n", counted, pos)
        counted = pos
        if text[pos] == "[":
            pos = _skip_ws(text, pos + 1)
            first = True
            while True:
                if pos < len(text) and text[pos] == "]":
                    pos += 1
                    break
                if not first:
                    if pos >= len(text) or text[pos] != ",":
                        yield _broken_tail(text, pos, path, element, "expected ',' or ']' between elements")
                        return
                    pos = _skip_ws(text, pos + 1)
                    if pos < len(text) and text[pos] == "]":  # a trailing comma: harmless, accepted
                        pos += 1
                        break
                try:
                    value, end = decoder.raw_decode(text, pos)
                except (ValueError, RecursionError) as exc:
                    yield _broken_tail(text, pos, path, element, getattr(exc, "msg", str(exc)))
                    return
                yield _value_row(f"{path}#{element}", value, text, pos, end, max_bytes)
                element, first = element + 1, False
                pos = _skip_ws(text, end)
        else:
            try:
                value, end = decoder.raw_decode(text, pos)
            except (ValueError, RecursionError):
                # Nothing parsed yet: the file only looked like a document, so all of it is JSON lines.
                start = text.rfind("\n", 0, pos) + 1 if element or counted_values else 0
                rest = text[start:].encode("utf-8", errors="surrogateescape")
                yield from read_json_lines(io.BytesIO(rest), path, SourceStats(hasher=NoHash()), max_bytes,
                                           first_line=line if start else 1)
                return
            yield _value_row(f"{path}:{line}", value, text, pos, end, max_bytes)
            counted_values += 1
            pos = end
        pos = _skip_ws(text, pos)


def _value_row(location: str, value: Any, text: str, start: int, end: int, max_bytes: int) -> Row:
    if end - start > max_bytes:
        return Row(location, None, text[start:start + HEAD_BYTES].encode("utf-8", errors="surrogateescape"),
                   RowError("oversize", f"record of {end - start} characters > {max_bytes} bytes"))
    if not _clean(value):
        return Row(location, None, text[start:min(end, start + HEAD_BYTES)].encode("utf-8", "surrogateescape"),
                   RowError("invalid_utf8", "undecodable bytes or a lone surrogate escape in the record"))
    return Row(location, value)


def _broken_tail(text: str, pos: int, path: str, element: int, why: str) -> Row:
    line = text.count("\n", 0, pos) + 1
    return Row(f"{path}#{element}", None, text[pos:pos + HEAD_BYTES].encode("utf-8", errors="surrogateescape"),
               RowError("invalid_json", f"JSON array broken at element {element} (line {line}): {why}; the rest "
                                        "of the array is this one reject"))


def read_json_lines(f: io.BufferedIOBase, path: str, stats: SourceStats, max_bytes: int,
                    length: int | None = None, head: bytes = b"", first_line: int = 1) -> Iterator[Row]:
    for lineno, line, too_long in iter_lines(f, stats, max_bytes, length, head, first_line):
        location = f"{path}:{lineno}"
        if too_long:
            yield Row(location, None, line, RowError("oversize", f"line longer than {max_bytes} bytes"))
            continue
        if lineno == 1 and line.startswith(BOM):
            line = line[len(BOM):]
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line.strip():
            yield Row(location, None, line, RowError("blank_line", "empty line"))
            continue
        yield parse_json_line(line, location)


def read_json_file(f: io.BufferedIOBase, path: str, stats: SourceStats, max_bytes: int,
                   length: int | None = None) -> Iterator[Row]:
    """A JSON file as JSON lines or as one document (``json_layout``); a byte range of it (``length``, the
    parallel workers) is always JSON lines."""
    if length is not None:
        yield from read_json_lines(f, path, stats, max_bytes, length)
        return
    head = f.read(BLOCK_BYTES)
    stats.hasher.update(head)
    stats.bytes_read += len(head)
    if json_layout(head, path) == "lines":
        yield from read_json_lines(f, path, stats, max_bytes, head=head)
        return
    rest = f.read()
    stats.hasher.update(rest)
    stats.bytes_read += len(rest)
    yield from iter_json_document(head + rest, path, max_bytes)


# --------------------------------------------------------------------------- text and Parquet

def read_text_file(f: io.BufferedIOBase, path: str, stats: SourceStats, max_bytes: int) -> Iterator[Row]:
    for lineno, line, too_long in iter_lines(f, stats, max_bytes):
        location = f"{path}:{lineno}"
        if too_long:
            yield Row(location, None, line, RowError("oversize", f"line longer than {max_bytes} bytes"))
            continue
        if lineno == 1 and line.startswith(BOM):
            line = line[len(BOM):]
        line = line.rstrip(b"\r")
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as bad:
            yield Row(location, None, line, RowError("invalid_utf8", f"byte {bad.start}: {bad.reason}"))
            continue
        if not text.strip():
            yield Row(location, None, line, RowError("blank_line", "empty line"))
            continue
        yield Row(location, {"text": text}, line)


def read_parquet_file(f: Any, path: str, stats: SourceStats) -> Iterator[Row]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(f)
    stats.fields = stats.fields or {n: str(t) for n, t in zip(pf.schema_arrow.names, pf.schema_arrow.types,
                                                              strict=True)}
    index = 0
    for batch in pf.iter_batches(batch_size=2048):
        for row in batch.to_pylist():
            stats.hasher.update(json.dumps(row, sort_keys=True, default=str).encode())
            yield Row(f"{path}#{index}", row)
            index += 1
    stats.bytes_read += pf.metadata.serialized_size


def shown_path(fs: fsspec.AbstractFileSystem, path: str) -> str:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return path if is_local(fs) else f"{protocol}://{path}"


def read_file(fs: fsspec.AbstractFileSystem, path: str, stats: SourceStats, max_bytes: int) -> Iterator[Row]:
    """Every row of one file, by its kind; raises (OSError, EOFError, ArrowInvalid, ...) when the file itself
    cannot be read."""
    shown = shown_path(fs, path)
    stats.files.append(shown)
    kind = file_kind(path)
    with fs.open(path, "rb", compression="infer") as raw:
        f = raw if hasattr(raw, "peek") else io.BufferedReader(raw)
        if kind == "json":
            yield from read_json_file(f, shown, stats, max_bytes)
        elif kind == "text":
            yield from read_text_file(f, shown, stats, max_bytes)
        elif kind == "csv":
            yield from read_csv_file(f, shown, stats, max_bytes)
        else:
            yield from read_parquet_file(f, shown, stats)


# --------------------------------------------------------------------------- hub and saved datasets

def load_hf(src: SourceConfig) -> Any:
    """``hf:NAME`` through datasets.load_dataset, ``disk:PATH`` through load_from_disk; one split."""
    import datasets

    if src.path.startswith("disk:"):
        path = src.path[len("disk:"):]
        try:
            ds = datasets.load_from_disk(path)
        except FileNotFoundError as exc:
            raise IngestError(f"source {src.name}: no saved dataset at {path} ({exc})") from None
        if isinstance(ds, datasets.DatasetDict):
            if src.split not in ds:
                raise IngestError(f"source {src.name}: {path} has no split {src.split!r} (has {list(ds)})")
            ds = ds[src.split]
        return ds
    name = src.path[len("hf:"):]
    try:
        return datasets.load_dataset(name, src.subset, split=src.split, revision=src.revision,
                                     streaming=src.streaming)
    except Exception as exc:  # noqa: BLE001 - unknown names and splits, no network, no cache: all one message
        raise IngestError(f"source {src.name}: cannot load {src.path} split {src.split!r}: "
                          f"{type(exc).__name__}: {str(exc)[:300]}") from None


def read_hf(src: SourceConfig, stats: SourceStats) -> Iterator[Row]:
    ds = load_hf(src)
    stats.files.append(src.path)
    features = getattr(ds, "features", None)
    if features is not None:
        stats.fields = {k: str(v) for k, v in features.items()}
    if hasattr(ds, "iter") and not src.streaming and hasattr(ds, "num_rows"):
        rows: Any = (dict(zip(b.keys(), vals, strict=True)) for b in ds.iter(batch_size=1024)
                     for vals in zip(*b.values(), strict=True))
    else:
        rows = iter(ds)
    for index, row in enumerate(rows):
        stats.hasher.update(json.dumps(row, sort_keys=True, default=str).encode())
        yield Row(f"{src.path}#{index}", row)
