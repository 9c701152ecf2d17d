"""CSV and TSV files, record by record: a quoted field may span lines, and a broken quote costs one line.

The csv module parses (non-strict, so a stray quote inside a field is kept as written); this module feeds it
physical lines and keeps the lines of the record being read, which makes three repairs possible:

- a quote that is opened and never closed would swallow the rest of the file into one field; when a record
  spans several lines and its quote does not close before the end of the data (or the field outgrows
  ``max_record_bytes``), only its first line is quarantined (``unbalanced_quote``) and the following lines
  are read again as records;
- a line longer than ``max_record_bytes`` is skipped to its end without being held (``oversize``); the csv
  module's own field limit (131,072 characters) is raised to ``max_record_bytes``;
- undecodable bytes make only their own row ``invalid_utf8``.

Export quirks read as meant: a UTF-8 byte-order mark (Excel's "CSV UTF-8") is dropped, header names are
stripped of surrounding spaces (a repeated name gets a ``_2`` suffix), a header without commas but with
semicolons or tabs sets the delimiter (European Excel), and empty cells past the header's width are dropped.
Records are numbered from 0 (``path#ROW``); details name the physical line.
"""
from __future__ import annotations

import csv
import io
from collections import deque
from collections.abc import Iterator
from typing import Any

from tasks.ingest.presets import RowError
from tasks.ingest.rows import RAW_CHARS, Row

HEAD_CHARS = RAW_CHARS * 2


class _HashingReader(io.RawIOBase):
    """Hash and count bytes as the csv module pulls them through a text wrapper."""

    def __init__(self, f: Any, stats: Any):
        self.f, self.stats = f, stats

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        data = self.f.read(len(buf))
        self.stats.hasher.update(data)
        self.stats.bytes_read += len(data)
        buf[: len(data)] = data
        return len(data)


class _Oversize(Exception):
    def __init__(self, line: int, head: str):
        super().__init__(f"line {line} is too long")
        self.line, self.head = line, head


class _Feed:
    """Physical lines for csv.reader, with their numbers; remembers the current record's lines and can be
    handed lines back to read again."""

    def __init__(self, text: io.TextIOBase, max_chars: int):
        self.text, self.max_chars = text, max_chars
        self.pending: deque[tuple[int, str]] = deque()
        self.current: list[tuple[int, str]] = []
        self.lineno = 0

    def __iter__(self) -> _Feed:
        return self

    def __next__(self) -> str:
        if self.pending:
            item = self.pending.popleft()
        else:
            line = self.text.readline(self.max_chars + 1)
            if not line:
                raise StopIteration
            self.lineno += 1
            if len(line) > self.max_chars:
                while (more := self.text.readline(self.max_chars + 1)) and not more.endswith(("\n", "\r")):
                    pass  # skip the rest of the long line without holding it
                raise _Oversize(self.lineno, line[:HEAD_CHARS])
            item = (self.lineno, line)
        self.current.append(item)
        return item[1]


def _delimiter(path: str, header_line: str) -> str:
    if ".tsv" in path.lower():
        return "\t"
    if "," not in header_line:
        for d in (";", "\t"):
            if d in header_line:
                return d
    return ","


def _header(cells: list[str]) -> list[str]:
    names: list[str] = []
    for cell in cells:
        name, k = cell.strip(), 2
        while name in names:
            name, k = f"{cell.strip()}_{k}", k + 1
        names.append(name)
    return names


def _unclosed(lines: list[tuple[int, str]], delimiter: str) -> bool:
    """Whether a multi-line record ends inside a quoted field (the lenient parser would accept it)."""
    try:
        for _ in csv.reader(io.StringIO("".join(line for _, line in lines)), delimiter=delimiter, strict=True):
            pass
    except csv.Error as exc:
        return "unexpected end of data" in str(exc)
    return False


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def _encode(text: str) -> bytes:
    return text.encode("utf-8", errors="surrogateescape")


def read_csv_file(f: Any, path: str, stats: Any, max_bytes: int) -> Iterator[Row]:
    """Every record of a CSV/TSV file after its header, as a dict of header name -> cell text."""
    if csv.field_size_limit() < max_bytes + 1:
        csv.field_size_limit(max_bytes + 1)
    # Undecodable bytes become lone surrogates, so the row that holds them can be quarantined by itself.
    text = io.TextIOWrapper(io.BufferedReader(_HashingReader(f, stats)), encoding="utf-8-sig",
                            errors="surrogateescape", newline="")
    feed = _Feed(text, max_bytes)
    try:
        first = next(feed)
    except StopIteration:
        return
    except _Oversize:
        raise ValueError(f"the CSV header line is longer than {max_bytes} characters") from None
    delimiter = _delimiter(path, first)
    feed.pending.append(feed.current.pop())
    reader = csv.reader(feed, delimiter=delimiter)
    header: list[str] | None = None
    index = 0
    while True:
        feed.current = []
        try:
            cells = next(reader)
            error = None
        except StopIteration:
            return
        except (csv.Error, _Oversize) as exc:
            cells, error = None, exc
        lines = feed.current
        broken = error is not None or (len(lines) > 1 and _unclosed(lines, delimiter))
        if broken and len(lines) > 1:
            # An open quote ran to the end of the data or past the size limit: blame its first line only and
            # read the lines it swallowed again.
            where, line = lines[0]
            yield Row(f"{path}#{index}", None, _encode(line[:HEAD_CHARS]),
                      RowError("unbalanced_quote", f"line {where}: a quoted field opened here never closes; "
                                                   f"the {len(lines) - 1} line(s) after it are read again"))
            index += 1
            feed.pending.extendleft(reversed(lines[1:]))
        elif isinstance(error, _Oversize):
            yield Row(f"{path}#{index}", None, _encode(error.head),
                      RowError("oversize", f"line {error.line} longer than {max_bytes} characters"))
            index += 1
        elif error is not None:
            where, line = lines[0] if lines else (feed.lineno, "")
            yield Row(f"{path}#{index}", None, _encode(line[:HEAD_CHARS]),
                      RowError("bad_csv_row", f"line {where}: {str(error)[:200]}"))
            index += 1
        if error is not None or broken:
            reader = csv.reader(feed, delimiter=delimiter)  # a fresh parser state after an error
            continue
        if header is None:
            if not any(c.strip() for c in cells):
                continue  # blank lines before the header
            header = _header(cells)
            continue
        raw = _encode("".join(line for _, line in lines).rstrip("\r\n"))
        location, where = f"{path}#{index}", lines[0][0] if lines else feed.lineno
        index += 1
        if len(cells) > len(header) and not any(c.strip() for c in cells[len(header):]):
            cells = cells[:len(header)]  # trailing empty cells (a trailing delimiter)
        if not any(c.strip() for c in cells):
            yield Row(location, None, raw, RowError("blank_line", f"line {where}: empty CSV row"))
        elif len(raw) > max_bytes:
            yield Row(location, None, raw[:HEAD_CHARS * 2], RowError("oversize", f"line {where}: record of "
                                                                                 f"{len(raw)} bytes > {max_bytes}"))
        elif any(_has_surrogates(c) for c in cells):
            yield Row(location, None, raw, RowError("invalid_utf8", f"line {where}: undecodable bytes in the row"))
        elif len(cells) != len(header):
            yield Row(location, None, raw, RowError("wrong_type", f"line {where}: {len(cells)} cells, header has "
                                                                  f"{len(header)}"))
        else:
            yield Row(location, dict(zip(header, cells, strict=True)), raw)
