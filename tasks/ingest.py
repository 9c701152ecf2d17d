"""Ingest: every configured source into the one record shape, as Parquet shards, accounting for every row.

Each row read is either kept (``data/``, RECORD_SCHEMA) or quarantined (``rejects/``, QUARANTINE_SCHEMA) with a
reason, its source and its line or row number; ``stats.json`` counts both, per reason. A missing source, or
one that yields no rows at all, is the only error that stops the stage.

Record ids are stable across runs and machines (20 hex digits of a SHA-1):
- a row with an id: ``sha1(source name, "id", raw id)``; a second row of the same source with that raw id is
  quarantined as ``duplicate_id``;
- a row without one: ``sha1(source name, "content", sha1(messages), k)`` where k counts earlier rows of the
  source with identical messages, so identical rows still get distinct ids (exact dedup drops them later).
The raw id is kept in ``meta.source_id``.
"""
from __future__ import annotations

import hashlib
import logging
import warnings
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
from prefect import task

from schemas.ingest import IngestConfig, SourceConfig
from schemas.pipeline import PipelineConfig
from schemas.record import QUARANTINE_SCHEMA, RECORD_SCHEMA
from tasks.artifacts import publish_table
from tasks.formats import RowError, convert_row, detect_format, dumps, resolve_fields
from tasks.ingest_readers import IngestError, Row, SourceStats, raw_text, read_source, resolve_files
from tasks.stage import Ledger, ShardWriter, StageOutput, digest, run_stage

__all__ = ["INGEST_VERSION", "IngestError", "ingest", "ingest_source", "ingest_task", "lineage_rows",
           "log_lineage_to_mlflow", "record_id", "source_fingerprint"]

INGEST_VERSION = "1"
FLUSH_ROWS = 8192  # rows buffered in Python before they go to a shard writer
log = logging.getLogger(__name__)


def _sha1(*parts: str) -> str:
    return hashlib.sha1("\x1f".join(parts).encode("utf-8", errors="surrogatepass")).hexdigest()


def record_id(source: str, raw_id: str) -> str:
    """The stable id of a row that brought its own id."""
    return _sha1(source, "id", raw_id)[:20]


def content_record_id(source: str, content_hash: str, occurrence: int) -> str:
    """The stable id of a row without an id: its content, and how many identical rows came before it."""
    return _sha1(source, "content", content_hash, str(occurrence))[:20]


class _Buffer:
    """Column lists of kept records and quarantined rows, flushed to their shard writers in blocks."""

    def __init__(self, data: ShardWriter, rejects: ShardWriter):
        self.data, self.rejects = data, rejects
        self.records: dict[str, list] = {n: [] for n in RECORD_SCHEMA.names}
        self.bad: dict[str, list] = {n: [] for n in QUARANTINE_SCHEMA.names}

    def keep(self, rid: str, source: str, messages: list, annotations: list, meta: str) -> None:
        r = self.records
        r["id"].append(rid)
        r["source"].append(source)
        r["messages"].append(messages)
        r["annotations"].append(annotations)
        r["meta"].append(meta)
        if len(r["id"]) >= FLUSH_ROWS:
            self.flush()

    def quarantine(self, source: str, row: Row, err: RowError) -> None:
        b = self.bad
        b["source"].append(source)
        b["location"].append(row.location)
        b["reject_reason"].append(err.reason)
        b["reject_detail"].append(err.detail)
        b["raw"].append(raw_text(row.raw, row.value))
        if len(b["source"]) >= FLUSH_ROWS:
            self.flush()

    def flush(self) -> None:
        if self.records["id"]:
            self.data.write(pa.Table.from_pydict(self.records, schema=RECORD_SCHEMA))
            self.records = {n: [] for n in RECORD_SCHEMA.names}
        if self.bad["source"]:
            self.rejects.write(pa.Table.from_pydict(self.bad, schema=QUARANTINE_SCHEMA))
            self.bad = {n: [] for n in QUARANTINE_SCHEMA.names}


def ingest_source(src: SourceConfig, cfg: IngestConfig, buf: _Buffer) -> dict[str, Any]:
    """Read one source into the buffer; return its lineage (counts per reason, digest, fields)."""
    stats = SourceStats()
    fields = resolve_fields(src.field_map)
    amap = src.annotation_map
    preset = None if src.format == "auto" else src.format
    dropped: Counter = Counter()
    n_in = kept = 0
    seen_ids: set[int] = set()  # 64-bit prefixes of record ids, enough to spot repeats in bounded memory
    occurrences: dict[bytes, int] = {}
    for row in read_source(src, stats, cfg.max_record_bytes):
        n_in += 1
        try:
            if row.error is not None:
                raise row.error
            value = row.value
            if preset is None:  # format auto: the first row that fits a preset decides for the source
                if not isinstance(value, Mapping):
                    raise RowError("not_an_object", f"a row must be a JSON object, got {type(value).__name__}")
                preset = detect_format(value, fields)
                if preset is None:
                    raise RowError("unknown_format", f"fields {sorted(map(str, value))[:8]} match no preset")
            raw_id, messages, annotations, meta = convert_row(value, preset, fields, amap)
            if row.raw is None:  # text rows were size-checked before parsing
                size = len(meta) + sum(len(m["content"]) for m in messages)
                if size > cfg.max_record_bytes:
                    raise RowError("oversize", f"about {size} bytes > {cfg.max_record_bytes}")
            if raw_id is not None:
                rid = record_id(src.name, raw_id)
                key = int(rid[:16], 16)
                if key in seen_ids:
                    raise RowError("duplicate_id", f"id {raw_id[:80]!r} already seen in source {src.name}")
                seen_ids.add(key)
            else:
                content = hashlib.sha1(dumps(messages).encode()).digest()[:12]
                k = occurrences.get(content, 0)
                occurrences[content] = k + 1
                rid = content_record_id(src.name, content.hex(), k)
        except RowError as err:
            dropped[err.reason] += 1
            buf.quarantine(src.name, row, err)
            continue
        except Exception as exc:  # noqa: BLE001 - a row must never crash the run; keep it with the error
            err = RowError("unreadable_row", f"{type(exc).__name__}: {str(exc)[:200]}")
            dropped[err.reason] += 1
            buf.quarantine(src.name, row, err)
            continue
        buf.keep(rid, src.name, messages, annotations, meta)
        kept += 1
    if n_in == 0:
        raise IngestError(f"source {src.name}: {src.path} yields no rows")
    if kept == 0:
        log.warning("source %s (%s): every row was quarantined: %s", src.name, src.path, dict(dropped))
    return {"name": src.name, "path": src.path, "format": preset or src.format, "weight": src.weight,
            "files": stats.files[:50], "n_files": len(stats.files), "bytes_read": stats.bytes_read,
            "digest": stats.hasher.hexdigest()[:32], "rows_in": n_in, "kept": kept,
            "dropped": dict(sorted(dropped.items())), "schema": stats.fields,
            **({"split": src.split, "revision": src.revision} if src.path.startswith(("hf:", "disk:")) else {})}


def ingest(cfg: IngestConfig, out: Path) -> Ledger:
    """Read every source into ``out/data`` (records) and ``out/rejects`` (quarantine); return the ledger."""
    out = Path(out)
    ledger = Ledger("ingest")
    lineage = []
    with ShardWriter(out / "data", RECORD_SCHEMA, cfg.shard_rows) as data, \
            ShardWriter(out / "rejects", QUARANTINE_SCHEMA, cfg.shard_rows) as rejects:
        buf = _Buffer(data, rejects)
        for src in cfg.sources:
            info = ingest_source(src, cfg, buf)
            lineage.append(info)
            ledger.n_in += info["rows_in"]
            ledger.kept += info["kept"]
            ledger.dropped.update(info["dropped"])
        buf.flush()
    ledger.extra["sources"] = lineage
    ledger.check()
    return ledger


def _file_fingerprint(fs: Any, path: str, full_below: int = 8 << 20) -> list[Any]:
    """Size, mtime and the bytes (all of a small file; head and tail of a big one)."""
    info = fs.info(path)
    size = info.get("size") or 0
    mtime = info.get("mtime") or info.get("LastModified") or info.get("ETag") or info.get("created")
    h = hashlib.sha256()
    with fs.open(path, "rb") as f:
        if size <= full_below:
            h.update(f.read())
        else:
            h.update(f.read(1 << 20))
            f.seek(size - (1 << 20))
            h.update(f.read())
    return [path, size, str(mtime), h.hexdigest()[:16]]


def source_fingerprint(src: SourceConfig) -> str:
    """A cheap digest of what a source would yield, for the stage key: file sizes, mtimes and bytes
    (whole small files, head and tail of big ones); for a hub dataset, its name and revision."""
    if src.path.startswith("hf:") or src.path.startswith("disk:"):
        target = src.path.split(":", 1)[1]
        local = Path(target)
        if local.exists():  # a saved dataset or a local dataset folder: fingerprint its files
            files = sorted(p for p in local.rglob("*") if p.is_file())
            import fsspec
            fs = fsspec.filesystem("file")
            return digest(src.path, [_file_fingerprint(fs, str(p)) for p in files])
        return digest(src.path, src.subset, src.split, src.revision or "unpinned")
    try:
        fs, files = resolve_files(src.path)
    except IngestError:
        return digest(src.path, "missing")  # ingest itself raises the clear error
    return digest(src.path, [_file_fingerprint(fs, p) for p in files])


def lineage_rows(stage: StageOutput) -> list[dict[str, Any]]:
    """One table row per source: where it came from, how much of it was kept, its digest."""
    rows = []
    for s in stage.ledger.extra.get("sources", []):
        rows.append({"source": s["name"], "path": s["path"], "format": s["format"], "files": s["n_files"],
                     "rows_in": s["rows_in"], "kept": s["kept"], "quarantined": s["rows_in"] - s["kept"],
                     "reasons": ", ".join(f"{k}={v}" for k, v in s["dropped"].items()),
                     "digest": s["digest"], "weight": s["weight"]})
    return rows


@task(name="ingest")
def ingest_task(cfg: PipelineConfig) -> StageOutput:
    """Ingest the configured sources (reusing a finished output of the same sources and config)."""
    key = digest("ingest", INGEST_VERSION, cfg.ingest, [source_fingerprint(s) for s in cfg.ingest.sources])
    stage = run_stage(cfg.workdir, "ingest", key, lambda tmp: ingest(cfg.ingest, tmp))
    publish_table("ingest-lineage", lineage_rows(stage), description=f"Sources of config {cfg.name}")
    return stage


def _mlflow_schema(fields: Mapping[str, str]) -> Any:
    from mlflow.types.schema import ColSpec, DataType, Schema

    scalar = {"str": DataType.string, "string": DataType.string, "int": DataType.long, "int64": DataType.long,
              "float": DataType.double, "double": DataType.double, "bool": DataType.boolean}
    if not fields:
        return None
    # Nested fields (messages, annotations) are recorded as strings of their type: the lineage is about
    # which columns a source had, not a full type system.
    return Schema([ColSpec(scalar.get(t, DataType.string), name) for name, t in fields.items()])


def _mlflow_source(s: Mapping[str, Any]) -> Any:
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.http_dataset_source import HTTPDatasetSource
    from mlflow.data.huggingface_dataset_source import HuggingFaceDatasetSource

    path = s["path"]
    if path.startswith("hf:"):
        return HuggingFaceDatasetSource(path[3:], split=s.get("split"), revision=s.get("revision"))
    target = path.split(":", 1)[1] if path.startswith("disk:") else path
    if "://" not in target:
        target = str(Path(target).resolve())
    try:
        with warnings.catch_warnings():  # local paths match two equivalent resolvers; MLflow warns about it
            warnings.simplefilter("ignore", UserWarning)
            return resolve_dataset_source(target)
    except Exception:  # noqa: BLE001 - an fsspec scheme MLflow has no resolver for
        return HTTPDatasetSource(target)


def log_lineage_to_mlflow(stage: StageOutput) -> None:
    """Log each ingested source to the active MLflow run as an ``mlflow.data`` input with its content digest,
    row counts and fields."""
    import mlflow
    from mlflow.data.meta_dataset import MetaDataset

    for s in stage.ledger.extra.get("sources", []):
        dataset = MetaDataset(_mlflow_source(s), name=s["name"], digest=s["digest"],
                              schema=_mlflow_schema(s.get("schema") or {}))
        tags = {"format": s["format"], "rows_in": str(s["rows_in"]), "rows_kept": str(s["kept"]),
                "rows_quarantined": str(s["rows_in"] - s["kept"]), "weight": str(s["weight"]),
                "files": str(s["n_files"])}
        mlflow.log_input(dataset, context="ingest", tags=tags)
