"""How stages hand data to each other: content-addressed directories of Parquet shards, a ledger, a marker.

A stage's output lives in ``WORKDIR/stages/NAME/KEY`` where KEY hashes the stage's inputs, config and code
version; the code version is a hash of the source of the stage's package (``code_version``), so a change to the
code can never be served a stale output, and no constant has to be remembered. The stage writes into a temporary sibling and renames it into place only after ``stats.json`` and
the ``_SUCCESS`` marker exist, so a killed run never leaves a partial directory that looks complete, and a
rerun with the same inputs reuses the finished output (as datatrove's completion markers do).

A workdir may be an object-store URL (``s3://bucket/prefix``, ``tasks.core.storage``): the stage then writes
into local scratch and uploads the directory with the marker last, and readers take URLs as well as paths.
"""
from __future__ import annotations

import errno
import functools
import hashlib
import importlib.util
import json
import os
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel

from tasks.core import storage
from tasks.core.pause import pause_point

SUCCESS = "_SUCCESS"
STATS = "stats.json"


class LedgerError(AssertionError):
    """A stage's counts do not add up: in != kept + sum(dropped)."""


@dataclass
class Ledger:
    """Counts of one stage: every input row is either kept or dropped for a named reason."""

    stage: str
    n_in: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    extra: dict[str, Any] = field(default_factory=dict)

    def drop(self, reason: str, n: int = 1) -> None:
        if n:
            self.dropped[reason] += n

    def check(self) -> None:
        total = self.kept + sum(self.dropped.values())
        if self.n_in != total:
            raise LedgerError(f"stage {self.stage}: in={self.n_in} but kept+dropped={total} ({dict(self.dropped)})")

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "in": self.n_in, "kept": self.kept,
                "dropped": dict(sorted(self.dropped.items())), **({"extra": self.extra} if self.extra else {})}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Ledger:
        return cls(stage=d.get("stage", ""), n_in=d["in"], kept=d["kept"], dropped=Counter(d.get("dropped", {})),
                   extra=d.get("extra", {}))

    def write(self, directory: Path) -> None:
        self.check()
        (directory / STATS).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def read_ledger(directory: str | Path) -> Ledger:
    """The ledger of a stage directory, local or at a URL (read directly, without mirroring the data)."""
    return Ledger.from_dict(json.loads(storage.read_text(storage.join(directory, STATS))))


@functools.lru_cache(maxsize=1024)
def _finished_remote_ledger(url: str) -> str:
    """The text of a finished stage's ledger at a URL, read once per process: the directory is
    content-addressed and complete (its marker is written last), so what it holds never changes. The text is
    parsed afresh on every access, so a caller's edits to its Ledger never reach the cache."""
    return storage.read_text(storage.join(url, STATS))


def digest(*parts: Any) -> str:
    """A short, stable hash of JSON-able parts (pydantic models included)."""
    def norm(p: Any) -> Any:
        return p.model_dump(mode="json") if isinstance(p, BaseModel) else p
    blob = json.dumps([norm(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@functools.cache
def code_version(*modules: str) -> str:
    """A hash of the source of the named modules; a package counts with every ``.py`` file under it.

    This is the code part of a stage's key: edit anything in the package a stage runs, and its outputs are
    rebuilt on the next run instead of silently reused."""
    h = hashlib.sha256()
    for name in modules:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise ModuleNotFoundError(f"code_version: no module {name!r}")
        if spec.submodule_search_locations:  # a package: all of its source, in a stable order
            root = Path(spec.origin).parent
            files = sorted(root.rglob("*.py"))
        else:
            root, files = Path(spec.origin).parent, [Path(spec.origin)]
        for f in files:
            h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class StageOutput:
    """Where a finished stage put its data, and its ledger.

    ``location`` is where it lives at rest: a local directory, or a URL of a remote workdir (``s3://...``).
    ``path`` is always a local directory with its files: the location itself, or this machine's mirror of a
    URL (downloaded on first use, in whichever process uses it: a Ray worker on another node fetches its own).
    """

    name: str
    key: str
    location: str | Path

    @property
    def url(self) -> str:
        return os.fspath(self.location)

    @property
    def path(self) -> Path:
        return storage.local_copy(self.location)

    @property
    def ledger(self) -> Ledger:
        if storage.is_remote(self.location):  # one GET per finished stage, not one per access
            return Ledger.from_dict(json.loads(_finished_remote_ledger(self.url)))
        return read_ledger(self.location)

    def data(self, sub: str = "data") -> Path:
        return self.path / sub


def is_complete(path: str | Path) -> bool:
    if storage.is_remote(path):
        return storage.isfile(storage.join(path, SUCCESS)) and storage.isfile(storage.join(path, STATS))
    path = Path(path)
    return (path / SUCCESS).is_file() and (path / STATS).is_file()


def publish_dir(tmp: Path, final: Path, complete: Callable[[Path], bool] = is_complete) -> Path:
    """Rename a finished temporary directory into place, unless a concurrent run already published a complete
    one: same key, same content, and possibly being read, so it must not be deleted under its reader."""
    if complete(final):
        shutil.rmtree(tmp, ignore_errors=True)
        return final
    if final.exists():  # an incomplete leftover from a killed run
        shutil.rmtree(final, ignore_errors=True)
    try:
        os.replace(tmp, final)
    except OSError:  # the concurrent run renamed its output in between
        if not complete(final):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _fill(tmp: Path, name: str, body: Callable[[Path], Ledger]) -> None:
    """A stage's temporary directory made complete: the body's data, its ledger, then the ``_SUCCESS`` marker."""
    ledger = body(tmp)
    pause_point(f"stage.{name}", tmp=tmp)  # test only: the data is written, the marker not yet
    ledger.stage = ledger.stage or name
    ledger.write(tmp)
    (tmp / SUCCESS).write_text("")


def run_stage(workdir: str | Path, name: str, key: str, body: Callable[[Path], Ledger]) -> StageOutput:
    """Run ``body(tmpdir) -> Ledger`` unless ``workdir/stages/name/key`` is already complete.

    The output appears atomically: a crash leaves only a ``.tmp`` directory, which the next run removes.
    A URL workdir (``s3://...``) goes through ``_run_remote_stage``.
    """
    if storage.is_remote(workdir):
        return _run_remote_stage(os.fspath(workdir), name, key, body)
    final = Path(workdir) / "stages" / name / key
    if is_complete(final):
        return StageOutput(name, key, final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{key}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _fill(tmp, name, body)
        publish_dir(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return StageOutput(name, key, final)


def _run_remote_stage(workdir: str, name: str, key: str, body: Callable[[Path], Ledger]) -> StageOutput:
    """``run_stage`` on an object store: the body writes into local scratch, exactly as for a local workdir
    (so the bytes are the same), then the directory is uploaded with ``_SUCCESS`` last. An object store has
    no atomic rename of a directory (tasks.core.storage.write_bytes says what S3 gives); the marker written
    last is what makes the output appear at once: ``is_complete`` trusts nothing without it."""
    final = storage.join(workdir, "stages", name, key)
    if is_complete(final):
        return StageOutput(name, key, final)
    with storage.local_scratch(f"{name}-{key}") as tmp:
        _fill(tmp, name, body)
        storage.put_tree(tmp, final, last=SUCCESS)
        storage.local_copy(final, seed=tmp)  # the next stage reads these files here: no download
    return StageOutput(name, key, final)


class ShardWriter:
    """Writes tables as numbered Parquet shards of at most ``shard_rows`` rows, so memory stays bounded."""

    def __init__(self, directory: Path, schema: pa.Schema, shard_rows: int = 50_000, prefix: str = "part"):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.schema, self.shard_rows, self.prefix = schema, shard_rows, prefix
        self.rows = 0
        self._shard = 0
        self._writer: pq.ParquetWriter | None = None
        self._in_shard = 0

    def write(self, table: pa.Table | pa.RecordBatch) -> None:
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        table = table.select(self.schema.names).cast(self.schema)
        offset = 0
        while offset < table.num_rows:
            if self._writer is None:
                path = self.directory / f"{self.prefix}-{self._shard:05d}.parquet"
                self._writer = pq.ParquetWriter(path, self.schema)
                self._in_shard = 0
            take = min(self.shard_rows - self._in_shard, table.num_rows - offset)
            self._writer.write_table(table.slice(offset, take))
            offset += take
            self._in_shard += take
            self.rows += take
            if self._in_shard >= self.shard_rows:
                self._roll()

    def _roll(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            self._shard += 1

    def discard(self) -> None:
        """Close and delete every shard written so far: the rows they held are taken back."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        for path in self.directory.glob(f"{self.prefix}-*.parquet"):
            path.unlink()
        self.rows = self._shard = self._in_shard = 0

    def close(self) -> int:
        self._roll()
        if self.rows == 0:  # an empty dataset still has its schema on disk
            pq.write_table(self.schema.empty_table(), self.directory / f"{self.prefix}-00000.parquet")
        return self.rows

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def shard_paths(directory: str | Path) -> list[Path]:
    """The Parquet shards of a directory in order (URLs, as strings, for a directory at a URL)."""
    if storage.is_remote(directory):
        return storage.list_files(directory, ".parquet")  # type: ignore[return-value]
    return sorted(Path(directory).glob("*.parquet"))


def parquet_file(path: str | Path) -> pq.ParquetFile:
    """A shard opened for reading, local or at a URL (streamed through fsspec, not downloaded whole)."""
    if storage.is_remote(path):
        return pq.ParquetFile(storage.open_file(path, "rb"))
    return pq.ParquetFile(path)


def iter_batches(directory: str | Path, batch_size: int = 10_000, columns: list[str] | None = None
                 ) -> Iterator[pa.RecordBatch]:
    """Stream a shard directory (local or at a URL) in order, one batch at a time."""
    for path in shard_paths(directory):
        yield from parquet_file(path).iter_batches(batch_size=batch_size, columns=columns)


def read_table(directory: str | Path, columns: list[str] | None = None) -> pa.Table:
    paths = shard_paths(directory)
    if not paths:
        raise FileNotFoundError(f"no Parquet shards in {directory}")
    fs, _ = storage.arrow_filesystem(directory)
    return pa.concat_tables([pq.read_table(storage.filesystem(p)[1] if storage.is_remote(p) else p,
                                           columns=columns, filesystem=fs) for p in paths])


def count_rows(directory: str | Path) -> int:
    return sum(parquet_file(p).metadata.num_rows for p in shard_paths(directory))


def with_reject_columns(table: pa.Table, stage: str, reasons: list[str] | str,
                        details: list[str | None] | None = None) -> pa.Table:
    """Append reject_stage / reject_reason / reject_detail columns to rejected rows."""
    n = table.num_rows
    reasons = [reasons] * n if isinstance(reasons, str) else reasons
    details = details if details is not None else [None] * n
    return (table.append_column("reject_stage", pa.array([stage] * n, pa.string()))
            .append_column("reject_reason", pa.array(reasons, pa.string()))
            .append_column("reject_detail", pa.array(details, pa.string())))


# Retries for tasks that read from the network (hub datasets and models, fsspec URLs): transient errors only,
# so a missing file or a bad row still fails at once with its own message.
_TRANSIENT_ERRNOS = {errno.EIO, errno.EAGAIN, errno.EBUSY, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNREFUSED}


def is_transient(exc: BaseException | None) -> bool:
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    return isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS


def retry_on_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry only what may succeed on a second try."""
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - the state's own exception, re-raised by result()
        return is_transient(exc) or is_transient(exc.__cause__)
    return False


IO_RETRIES: dict[str, Any] = {"retries": 3, "retry_delay_seconds": [5, 20, 60],
                              "retry_condition_fn": retry_on_transient}

