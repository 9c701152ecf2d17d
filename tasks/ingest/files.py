"""A source's files into parts, file by file: the per-file preset, and the whole-file quarantine.

Each file is read under its own preset: with ``format: auto`` the first of its leading rows that fits one
decides (so a directory may mix messages JSONL, alpaca JSON and CSV); the ``files`` table of the lineage
says what each file got. A file that cannot be read to its end (not gzip, cut short, not Parquet, an I/O
error), and an entry that is not a regular file (a FIFO, a socket, a dangling link: ``tasks.ingest.listing``),
is quarantined whole as one row: location = its path, reason ``corrupt_file``, ``unreadable_file``,
``special_file`` or ``dangling_link``, and any rows already read from it are taken back. The rest of the
source goes on, unless ``ingest.unreadable_files: fail``.

Small plain local files share one part (few shards for a directory of many files); compressed, Parquet,
remote and big files get a part each; big JSON-lines files are split over processes (tasks.ingest.parallel).
On a task runner (``runner.kind`` processes or ray) each of those parts is one task, so the files of a source
are read in parallel; the parts, the lineage and the digest are those of the sequential read.
"""
from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec

from schemas.ingest import IngestConfig, SourceConfig
from tasks.core import storage
from tasks.core.errors import SourceError
from tasks.core.handoff import read_handoff, write_handoff
from tasks.core.recovery import is_disk_full
from tasks.core.shards import Mapper
from tasks.ingest.convert import DETECT_ROWS, FLUSH_BYTES, PartResult, RowConverter
from tasks.ingest.listing import COMPRESSIONS, Entry, list_source
from tasks.ingest.parallel import can_split, convert_split
from tasks.ingest.presets import RowError, detect_format, resolve_fields
from tasks.ingest.readers import NoHash, SourceStats, file_kind, read_file, shown_path
from tasks.ingest.rows import Row

HANDOFFS = "_groups"  # where runner workers leave what they read, for this process to merge (then removed)
FILE_REASONS = ("corrupt_file", "unreadable_file", "special_file", "dangling_link")


@dataclass
class _Failure:
    exc: BaseException


@dataclass
class SourceFiles:
    """What reading a source's files produced: the parts in input order and one table row per file."""

    parts: list[PartResult] = field(default_factory=list)
    files: list[dict[str, Any]] = field(default_factory=list)


def file_error(exc: BaseException, shown: str, taken_back: int = 0) -> RowError:
    """The whole-file reject of a file that failed while it was read."""
    back = f"; the {taken_back} row(s) read before the error are not kept" if taken_back else ""
    if isinstance(exc, OSError) and exc.errno is not None:
        return RowError("unreadable_file", f"{shown}: {exc.strerror or exc}{back}")
    return RowError("corrupt_file", f"{shown} is damaged, cut short or not what its name says "
                                    f"({type(exc).__name__}: {str(exc)[:300]}){back}")


def is_workdir_error(exc: BaseException, out: Path) -> bool:
    """A failure to write our own output (full or read-only disk): never blamed on the input file."""
    if is_disk_full(exc):
        return True
    name = getattr(exc, "filename", None)
    return getattr(exc, "errno", None) in (errno.EROFS, errno.EACCES, errno.EPERM) and bool(name) and \
        Path(os.path.abspath(name)).is_relative_to(Path(os.path.abspath(out)))


def _guarded(rows: Iterator[Row]) -> Iterator[Row | _Failure]:
    """The rows, then a _Failure if the reader raised: the reader's errors apart from the converter's."""
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except Exception as exc:  # noqa: BLE001 - any way a file can fail to read is a whole-file reject
            yield _Failure(exc)
            return
        yield row


def _own_part(fs: fsspec.AbstractFileSystem, path: str) -> bool:
    """Whether a file needs a part of its own: one it may take more memory than its size to hold (compressed,
    Parquet), or a remote or big one."""
    if shown_path(fs, path) != path or path.lower().endswith(COMPRESSIONS) or file_kind(path) == "parquet":
        return True
    try:
        return os.path.getsize(path) > FLUSH_BYTES
    except OSError:
        return True


def _detect(rows: Iterator[Row | _Failure], fields: dict[str, Any]) -> tuple[list[Row | _Failure], str | None]:
    """The leading rows (kept for conversion) and the preset of the first that fits one."""
    head: list[Row | _Failure] = []
    for row in rows:
        head.append(row)
        if isinstance(row, _Failure):
            break
        if row.error is None and isinstance(row.value, dict) and (preset := detect_format(row.value, fields)):
            return head, preset
        if len(head) >= DETECT_ROWS:
            break
    return head, None


class SourceReader:
    """Reads the files of one local or fsspec source into parts of ``out``."""

    def __init__(self, src: SourceConfig, cfg: IngestConfig, out: Path, index: int, stats: SourceStats,
                 mapper: Mapper | None = None):
        self.src, self.cfg, self.out, self.index, self.stats = src, cfg, out, index, stats
        self.mapper = mapper  # a task runner for the files and split files' byte ranges, or None (this process)
        self.result = SourceFiles()
        self.n_in = 0

    def _prefix(self, f_index: int) -> str:
        return f"part-{self.index:03d}-{f_index:05d}"

    def _left(self) -> int | None:
        return None if self.src.limit is None else self.src.limit - self.n_in

    def _limit_reached(self) -> bool:
        left = self._left()
        return left is not None and left <= 0

    def _reject_file(self, conv: RowConverter, shown: str, error: RowError) -> None:
        if self.cfg.unreadable_files == "fail":
            raise SourceError(f"source {self.src.name}: {error.reason}: {error.detail} "
                              "(ingest.unreadable_files is 'fail'; set it to 'quarantine' to skip such files)")
        conv.begin_file(None)
        conv.add(Row(shown, None, None, error))
        conv.end_file()
        self.n_in += 1
        self.result.files.append({"file": shown, "format": "-", "rows": 1, "quarantined": error.reason})

    def read(self) -> SourceFiles:
        fs, entries = list_source(self.src.path)
        groups = plan_groups(fs, entries, self.cfg, self.src)
        if self.mapper is not None and self.src.limit is None:
            self._read_mapped(fs, groups)
        else:  # in order in this process (a row limit is counted across files, so it reads them one by one)
            for group in groups:
                self.read_group(fs, group)
        return self.result

    def read_group(self, fs: fsspec.AbstractFileSystem, group: Group) -> None:
        """Read one group's entries into its part (a split file: its byte ranges' parts), in order, up to the
        source's row limit."""
        if self._limit_reached():
            return
        first, entry = group.entries[0]
        if group.kind == "split":
            self.stats.start_file()
            self._read_split(fs, entry.path, shown_path(fs, entry.path), first)
            self.stats.end_file()
            return
        conv = RowConverter(self.src, self.cfg, self.out, f"{self._prefix(first)}-00000", None,
                            shared=group.kind == "shared")
        for _, entry in group.entries:
            if self._limit_reached():
                break
            shown = shown_path(fs, entry.path)
            if entry.error is not None:
                self._reject_file(conv, shown, entry.error)
                continue
            self.stats.start_file()
            self._read_file(conv, fs, entry.path, shown)
            self.stats.end_file()
        self.result.parts.append(conv.close())

    def _read_mapped(self, fs: fsspec.AbstractFileSystem, groups: list[Group]) -> None:
        """Every group on the task runner: one task per part (``read_group_to_file``, which reads it as
        ``read_group`` does); big JSON-lines files are split into byte-range tasks by this process. The results
        are merged in listing order, so the parts, the lineage and the digest are the ones a sequential read
        gives."""
        jobs = [(self.src.model_dump(), self.cfg.model_dump(), str(self.out), self.index, group)
                for group in groups if group.kind != "split"]
        handoffs = iter(self.mapper(read_group_to_file, jobs)) if jobs else iter(())  # type: ignore[misc]
        for group in groups:
            if group.kind == "split":
                self.read_group(fs, group)
                continue
            path = Path(next(handoffs))
            read = read_handoff(path)
            path.unlink()
            self.result.parts += read["parts"]
            self.result.files += read["files"]
            self.stats.merge(read["stats"])
            self.n_in += read["n_in"]
        shutil.rmtree(self.out / HANDOFFS, ignore_errors=True)  # the stage's output holds data/ and rejects/ only

    def _read_file(self, conv: RowConverter, fs: fsspec.AbstractFileSystem, path: str, shown: str) -> None:
        inner = read_file(fs, path, self.stats, self.cfg.max_record_bytes)
        rows = _guarded(inner)
        fixed = None if self.src.format == "auto" else self.src.format
        head, preset = ([], fixed) if fixed else _detect(rows, conv.fields)
        conv.begin_file(preset)
        start, left = conv.result.n_in, self._left()
        failure = None
        for row in _chain(head, rows):
            if isinstance(row, _Failure):
                failure = row.exc
                break
            conv.add(row)
            if left is not None and conv.result.n_in - start >= left:
                break
        inner.close()
        if failure is not None:
            if is_workdir_error(failure, self.out):
                raise failure
            read = conv.result.n_in - start
            conv.abort_file()
            self._reject_file(conv, shown, file_error(failure, shown, read))
            return
        conv.end_file()
        n = conv.result.n_in - start
        self.n_in += n
        self.result.files.append({"file": shown, "format": preset or "per row", "rows": n, "quarantined": ""})

    def _read_split(self, fs: fsspec.AbstractFileSystem, path: str, shown: str, f_index: int) -> None:
        preset = None if self.src.format == "auto" else self.src.format
        if preset is None:
            probe = read_file(fs, path, SourceStats(hasher=NoHash()), self.cfg.max_record_bytes)
            _, preset = _detect(_guarded(probe), resolve_fields(self.src.field_map))
            probe.close()
        try:
            parts = convert_split(self.src, self.cfg, path, self.out, self._prefix(f_index), preset, self.stats,
                                  self.mapper)
        except Exception as exc:  # noqa: BLE001 - the file failed to read: quarantine it whole
            if is_workdir_error(exc, self.out):
                raise
            conv = RowConverter(self.src, self.cfg, self.out, f"{self._prefix(f_index)}-00000", None)
            self._reject_file(conv, shown, file_error(exc, shown))
            self.result.parts.append(conv.close())
            return
        self.result.parts += parts
        n = sum(p.n_in for p in parts)
        self.n_in += n
        self.result.files.append({"file": shown, "format": preset or "per row", "rows": n, "quarantined": ""})


@dataclass(frozen=True)
class Group:
    """Entries of a source's listing (each with its index, which names its part) that make one part: a big
    JSON-lines file split into byte ranges ('split'), a file with a part of its own ('own'), or a run of small
    files and unreadable entries that share one ('shared')."""

    kind: str
    entries: list[tuple[int, Entry]]


def plan_groups(fs: fsspec.AbstractFileSystem, entries: list[Entry], cfg: IngestConfig, src: SourceConfig
                ) -> list[Group]:
    """The listing cut into parts, the one decision both the sequential read and the task runner follow."""
    groups: list[Group] = []
    run: list[tuple[int, Entry]] = []
    for f_index, entry in enumerate(entries):
        kind = "shared" if entry.error is not None else "split" if can_split(fs, entry.path, cfg, src) else \
            "own" if _own_part(fs, entry.path) else "shared"
        if kind == "shared":
            run.append((f_index, entry))
            continue
        if run:
            groups.append(Group("shared", run))
            run = []
        groups.append(Group(kind, [(f_index, entry)]))
    if run:
        groups.append(Group("shared", run))
    return groups


def read_group_to_file(job: tuple) -> str:
    """Runner worker: read one ``Group`` into its part under the stage directory; what it saw (the part
    results, which hold a key per kept row, the files table, the per-file digests) goes to a handoff file there
    rather than through the task runner."""
    src_json, cfg_json, out, index, group = job
    src, cfg = SourceConfig.model_validate(src_json), IngestConfig.model_validate(cfg_json)
    fs, _ = storage.filesystem(src.path)
    reader = SourceReader(src, cfg, Path(out), index, SourceStats())
    reader.read_group(fs, group)
    target = Path(out) / HANDOFFS / f"group-{index:03d}-{group.entries[0][0]:05d}.pkl"
    target.parent.mkdir(parents=True, exist_ok=True)
    write_handoff({"parts": reader.result.parts, "files": reader.result.files, "stats": reader.stats.as_dict(),
                   "n_in": reader.n_in}, target)
    return str(target)


def _chain(head: list[Row | _Failure], rest: Iterator[Row | _Failure]) -> Iterator[Row | _Failure]:
    yield from head
    if not (head and isinstance(head[-1], _Failure)):
        yield from rest
