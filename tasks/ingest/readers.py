"""Readers: every kind of source as one stream of ``Row``s, in bounded memory, hashing what they read.

A source is a local file, glob or directory, an fsspec URL, ``hf:NAME`` (``datasets.load_dataset``) or
``disk:PATH`` (``datasets.load_from_disk``). Files are read by extension (compression suffixes such as .gz are
undone by fsspec): .jsonl/.ndjson/.json (JSON lines, or one JSON array), .csv/.tsv, .parquet, .txt (one text
per line). Text lines are numbered from 1 (``path:LINE``), table rows from 0 (``path#ROW``).

JSON lines are cut out of fixed-size blocks, so memory stays bounded by the block size plus
``max_record_bytes`` whatever the input; a longer line is skipped to its end and reported as ``oversize``.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import fsspec

from schemas.ingest import SourceConfig
from tasks.ingest.presets import RowError

try:
    from orjson import JSONDecodeError as _OrjsonError
    from orjson import loads as _loads
    _JSON_ERRORS: tuple[type[Exception], ...] = (_OrjsonError, ValueError, RecursionError)
except ImportError:  # pragma: no cover
    _loads = json.loads
    _JSON_ERRORS = (ValueError, RecursionError)

BLOCK_BYTES = 1 << 22
RAW_CHARS = 2000  # how much of a bad row the quarantine keeps
HEAD_BYTES = RAW_CHARS * 4
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst", ".zstd", ".lz4")
JSON_EXT, CSV_EXT, PARQUET_EXT, TEXT_EXT = (".jsonl", ".ndjson", ".json"), (".csv", ".tsv"), (".parquet", ".pq"), \
    (".txt", ".text", ".md")
KNOWN_EXT = JSON_EXT + CSV_EXT + PARQUET_EXT + TEXT_EXT


class IngestError(RuntimeError):
    """A source that cannot be read at all: missing, or yielding nothing. The message names the path."""


@dataclass
class Row:
    """One row read from a source: a parsed object, or the error that kept it from parsing."""

    location: str
    value: Any = None
    raw: bytes | None = None  # the original bytes of a text row, for the quarantine
    error: RowError | None = None


@dataclass
class SourceStats:
    """What a reader saw of its source: the files, a digest of every byte or row read, the fields."""

    files: list[str] = field(default_factory=list)
    hasher: Any = field(default_factory=hashlib.sha256)
    fields: dict[str, str] = field(default_factory=dict)
    bytes_read: int = 0
    lines: int = 0

    def note_fields(self, row: Any) -> None:
        if not self.fields and isinstance(row, dict):
            self.fields = {str(k): type(v).__name__ for k, v in row.items()}


def raw_text(raw: bytes | None, value: Any = None) -> str:
    if raw is not None:
        return raw[:RAW_CHARS * 4].decode("utf-8", errors="backslashreplace")[:RAW_CHARS]
    try:
        return json.dumps(value, default=str, ensure_ascii=False)[:RAW_CHARS]
    except (TypeError, ValueError, RecursionError):
        return repr(value)[:RAW_CHARS]


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


def resolve_files(path: str) -> tuple[fsspec.AbstractFileSystem, list[str]]:
    """The files a local path, glob, directory or fsspec URL names, sorted; IngestError if there are none."""
    fs, root = fsspec.core.url_to_fs(path)
    if any(c in root for c in "*?["):
        files = sorted(p for p in fs.glob(root) if fs.isfile(p))
    elif fs.isdir(root):
        files = sorted(p for p in fs.find(root) if p.lower().endswith(KNOWN_EXT + tuple(
            e + c for e in KNOWN_EXT for c in COMPRESSIONS)) and not p.rsplit("/", 1)[-1].startswith("."))
    elif fs.exists(root):
        files = [root]
    else:
        raise IngestError(f"source not found: {path}")
    if not files:
        raise IngestError(f"source {path} matches no readable files (looked for {', '.join(KNOWN_EXT)})")
    return fs, files


def parse_json_line(line: bytes, location: str) -> Row:
    try:
        return Row(location, _loads(line), line)
    except _JSON_ERRORS as exc:
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as bad:
            return Row(location, None, line, RowError("invalid_utf8", f"byte {bad.start}: {bad.reason}"))
        return Row(location, None, line, RowError("invalid_json", str(exc)[:200]))


def iter_lines(f: io.BufferedIOBase, stats: SourceStats, max_bytes: int, length: int | None = None
               ) -> Iterator[tuple[int, bytes, bool]]:
    """(line number, line, too long) for each line of the next ``length`` bytes (all by default); a line
    longer than ``max_bytes`` comes back as its head only, and is never held whole in memory."""
    carry, lineno, skipping = b"", 0, False
    left = -1 if length is None else length
    while left and (block := f.read(BLOCK_BYTES if left < 0 else min(BLOCK_BYTES, left))):
        left -= len(block) if left > 0 else 0
        stats.hasher.update(block)
        stats.bytes_read += len(block)
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
    stats.lines += lineno


def is_json_array(f: io.BufferedIOBase, path: str) -> bool:
    """A .json file holding one JSON array (rather than JSON lines)."""
    head = f.peek(64)[:64] if hasattr(f, "peek") else b""
    return _strip_compression(path.lower()).endswith(".json") and head.lstrip()[:1] == b"["


def read_json_file(f: io.BufferedIOBase, path: str, stats: SourceStats, max_bytes: int,
                   length: int | None = None) -> Iterator[Row]:
    if length is None and is_json_array(f, path):  # one JSON array: it has to be parsed whole
        data = f.read()
        stats.hasher.update(data)
        stats.bytes_read += len(data)
        try:
            rows = _loads(data)
        except _JSON_ERRORS as exc:
            yield Row(f"{path}:1", None, data[:RAW_CHARS], RowError("invalid_json", str(exc)[:200]))
            return
        for i, row in enumerate(rows if isinstance(rows, list) else [rows]):
            yield Row(f"{path}#{i}", row)
        return
    for lineno, line, too_long in iter_lines(f, stats, max_bytes, length):
        location = f"{path}:{lineno}"
        if too_long:
            yield Row(location, None, line, RowError("oversize", f"line longer than {max_bytes} bytes"))
            continue
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line.strip():
            yield Row(location, None, line, RowError("blank_line", "empty line"))
            continue
        yield parse_json_line(line, location)


def read_text_file(f: io.BufferedIOBase, path: str, stats: SourceStats, max_bytes: int) -> Iterator[Row]:
    for lineno, line, too_long in iter_lines(f, stats, max_bytes):
        location = f"{path}:{lineno}"
        if too_long:
            yield Row(location, None, line, RowError("oversize", f"line longer than {max_bytes} bytes"))
            continue
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


class _HashingReader(io.RawIOBase):
    """Hash and count bytes as the csv module pulls them through a text wrapper."""

    def __init__(self, f: io.BufferedIOBase, stats: SourceStats):
        self.f, self.stats = f, stats

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        data = self.f.read(len(buf))
        self.stats.hasher.update(data)
        self.stats.bytes_read += len(data)
        buf[: len(data)] = data
        return len(data)


def read_csv_file(f: io.BufferedIOBase, path: str, stats: SourceStats) -> Iterator[Row]:
    # Undecodable bytes become lone surrogates, so the row that holds them can be quarantined by itself.
    text = io.TextIOWrapper(io.BufferedReader(_HashingReader(f, stats)), encoding="utf-8",
                            errors="surrogateescape", newline="")
    delimiter = "\t" if ".tsv" in path.lower() else ","
    reader = csv.reader(text, delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        return
    for i, cells in enumerate(reader):
        location = f"{path}#{i}"
        raw = delimiter.join(cells).encode("utf-8", errors="surrogateescape")
        if not any(c.strip() for c in cells):
            yield Row(location, None, raw, RowError("blank_line", "empty CSV row"))
        elif any(_has_surrogates(c) for c in cells):
            yield Row(location, None, raw, RowError("invalid_utf8", "undecodable bytes in the row"))
        elif len(cells) != len(header):
            yield Row(location, None, raw, RowError("wrong_type", f"{len(cells)} cells, header has {len(header)}"))
        else:
            yield Row(location, dict(zip(header, cells, strict=True)), raw)


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


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
    return path if protocol in ("file", "local") else f"{protocol}://{path}"


def read_file(fs: fsspec.AbstractFileSystem, path: str, stats: SourceStats, max_bytes: int) -> Iterator[Row]:
    """Every row of one file, by its kind."""
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
            yield from read_csv_file(f, shown, stats)
        else:
            yield from read_parquet_file(f, shown, stats)


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
    except (FileNotFoundError, ValueError) as exc:  # datasets raises these for unknown names and splits
        raise IngestError(f"source {src.name}: cannot load {src.path} split {src.split!r}: {exc}") from None


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
