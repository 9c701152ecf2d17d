"""Which files a source names, and which of its entries cannot be read at all (before anything is opened).

A local path, glob or directory is listed with ``os`` calls so that every odd entry is seen for what it is:
a FIFO (opening it would block for ever), a socket, a device, a dangling symlink or a directory that cannot be
listed becomes an ``Entry`` with a file-level ``RowError`` instead of a file to read. Ingest quarantines such
an entry as one row (reason ``special_file``, ``dangling_link`` or ``unreadable_file``, location = the path)
and goes on with the rest of the source. Other fsspec URLs (``s3://``, ``http://``, ...) are listed by fsspec.

A directory yields the files with a known extension (optionally compressed), skipping hidden files; a glob
yields every match that is not a directory; a path that names one entry yields that entry.
"""
from __future__ import annotations

import glob
import os
import stat
from dataclasses import dataclass

import fsspec

from tasks.core import storage
from tasks.core.errors import SourceError
from tasks.ingest.presets import RowError

COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst", ".zstd", ".lz4")
JSON_EXT, CSV_EXT, PARQUET_EXT, TEXT_EXT = (".jsonl", ".ndjson", ".json"), (".csv", ".tsv"), \
    (".parquet", ".pq"), (".txt", ".text", ".md")
KNOWN_EXT = JSON_EXT + CSV_EXT + PARQUET_EXT + TEXT_EXT
_READABLE = KNOWN_EXT + tuple(e + c for e in KNOWN_EXT for c in COMPRESSIONS)


class IngestError(SourceError):
    """A source that cannot be read at all: missing, or yielding nothing. The message names the path."""


@dataclass(frozen=True)
class Entry:
    """One entry of a source: a file to read, or (``error`` set) one that is quarantined without opening it."""

    path: str
    error: RowError | None = None


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def _special(mode: int) -> str | None:
    for test, what in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return what
    return None


def classify(path: str) -> Entry | None:
    """The entry of one local path: a regular file (``error`` None), a quarantined odd entry, or None for a
    directory (never read as a file)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            target = os.readlink(path)
            return Entry(path, RowError("dangling_link", f"{path} is a symbolic link to {target}, which does "
                                                         "not exist"))
        return Entry(path, RowError("unreadable_file", f"{path} disappeared while the source was listed"))
    except OSError as exc:  # EACCES on a parent, ELOOP on a symlink cycle, ...
        return Entry(path, RowError("unreadable_file", f"{path}: {exc.strerror or exc}"))
    if stat.S_ISDIR(st.st_mode):
        return None
    if (what := _special(st.st_mode)) is not None:
        return Entry(path, RowError("special_file", f"{path} is {what}, not a regular file; it is not opened"))
    return Entry(path)


def _walk(root: str) -> list[Entry]:
    """Every readable-looking entry under a local directory, following symlinked directories once each."""
    entries: list[Entry] = []
    seen: set[tuple[int, int]] = set()

    def unlisted(exc: OSError) -> None:
        where = exc.filename or root
        entries.append(Entry(where, RowError("unreadable_file", f"directory {where} cannot be listed: "
                                                                f"{exc.strerror or exc}")))

    for top, dirs, names in os.walk(root, onerror=unlisted, followlinks=True):
        try:
            st = os.stat(top)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in seen:  # a symlink cycle: this directory was listed already
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs.sort()
        for name in names:
            if name.startswith(".") or not name.lower().endswith(_READABLE):
                continue
            entry = classify(os.path.join(top, name))
            if entry is not None:
                entries.append(entry)
    return sorted(entries, key=lambda e: e.path)


def list_source(path: str) -> tuple[fsspec.AbstractFileSystem, list[Entry]]:
    """The entries a local path, glob, directory or fsspec URL names, sorted by path; IngestError if none."""
    try:
        fs, root = storage.filesystem(path)  # the S3 endpoint from the environment or storage.endpoint_url
    except ImportError as exc:  # e.g. s3:// without s3fs: name the package to install
        raise IngestError(f"source {path}: {exc}") from None
    is_glob = any(c in root for c in "*?[")
    if is_local(fs):
        if is_glob:
            matches = sorted(glob.glob(root, recursive=True))
            entries = [e for e in map(classify, matches) if e is not None]
        elif os.path.isdir(root):
            entries = _walk(root)
        elif os.path.lexists(root):
            entries = [e for e in [classify(root)] if e is not None]
        else:
            raise IngestError(f"source not found: {path}")
    else:
        if is_glob:
            files = sorted(p for p in fs.glob(root) if fs.isfile(p))
        elif fs.isdir(root):
            files = sorted(p for p in fs.find(root) if p.lower().endswith(_READABLE)
                           and not p.rsplit("/", 1)[-1].startswith("."))
        elif fs.exists(root):
            files = [root]
        else:
            raise IngestError(f"source not found: {path}")
        entries = [Entry(p) for p in files]
    if not entries:
        raise IngestError(f"source {path} matches no readable files (looked for {', '.join(KNOWN_EXT)})")
    return fs, entries
