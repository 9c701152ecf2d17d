"""Ingest: every configured source into the one record shape, as Parquet shards, accounting for every row.

Each row read is either kept (``data/``, RECORD_SCHEMA) or quarantined (``rejects/``, QUARANTINE_SCHEMA) with a
reason, its source and its line or row number; ``stats.json`` counts both, per reason. A missing source, or
one that yields no rows at all, is the only error that stops the stage.

Record ids are stable across runs and machines (20 hex digits of a SHA-1):
- a row with an id: ``sha1(source name, "id", raw id)``; a second row of the same source with that raw id is
  quarantined as ``duplicate_id``;
- a row without one: ``sha1(source name, "content", 64 bits of sha1(messages), k)`` where k counts earlier
  rows of the source with identical messages, so identical rows still get distinct ids (exact dedup drops
  them later).
The raw id is kept in ``meta.source_id``. With ``format: auto`` the first of a source's leading rows that fits
a preset picks the preset for the whole source.

Big local JSON-lines files are split over ``workers`` processes (tasks.ingest.parallel); the output is the
same as in-process, row for row. Memory stays bounded: rows are read in 4 MiB blocks and written every 8,192
rows; what grows with the input is about 100 bytes per kept row (its id key, for the duplicate-id check
and for reconciling parallel parts).
"""
from __future__ import annotations

import hashlib
import itertools
import logging
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from prefect import task

from schemas.ingest import IngestConfig, SourceConfig
from schemas.pipeline import PipelineConfig
from schemas.record import QUARANTINE_SCHEMA, RECORD_SCHEMA
from tasks.core.stage import IO_RETRIES, Ledger, StageOutput, code_version, digest, run_stage, shard_paths
from tasks.ingest.convert import PartResult, RowConverter, content_record_id, detect_preset, record_id
from tasks.ingest.parallel import can_split, convert_split, reconcile
from tasks.ingest.presets import resolve_fields
from tasks.ingest.readers import IngestError, Row, SourceStats, read_file, read_hf, resolve_files
from tasks.track.artifacts import publish_table

__all__ = ["IngestError", "content_record_id", "ingest", "ingest_source", "ingest_task",
           "lineage_rows", "log_lineage_to_mlflow", "record_id", "source_fingerprint"]

log = logging.getLogger(__name__)


def _leading_rows(src: SourceConfig, max_bytes: int) -> Iterator[Row]:
    """The first rows of a source, read separately, for format detection."""
    stats = SourceStats()
    if src.path.startswith(("hf:", "disk:")):
        yield from read_hf(src, stats)
        return
    fs, files = resolve_files(src.path)
    for path in files:
        yield from read_file(fs, path, stats, max_bytes)


def ingest_source(src: SourceConfig, cfg: IngestConfig, out: Path, index: int) -> dict[str, Any]:
    """Convert one source into parts of ``out``; return its lineage (counts per reason, digest, fields)."""
    stats = SourceStats()
    preset = None if src.format == "auto" else src.format
    if preset is None:
        rows = _leading_rows(src, cfg.max_record_bytes)
        try:
            preset = detect_preset(rows, resolve_fields(src.field_map))
        finally:
            rows.close()
    parts: list[PartResult] = []
    conv: RowConverter | None = None
    n_in = 0
    if src.path.startswith(("hf:", "disk:")):
        conv = RowConverter(src, cfg, out, f"part-{index:03d}-00000-00000", preset)
        for row in itertools.islice(read_hf(src, stats), src.limit):
            conv.add(row)
    else:
        fs, files = resolve_files(src.path)
        for f_index, path in enumerate(files):
            if src.limit is not None and n_in >= src.limit:
                break
            if can_split(fs, path, cfg, src):
                if conv is not None:
                    parts.append(conv.close())
                    conv = None
                parts += convert_split(src, cfg, path, out, f"part-{index:03d}-{f_index:05d}", preset, stats)
                continue
            if conv is None:
                conv = RowConverter(src, cfg, out, f"part-{index:03d}-{f_index:05d}-00000", preset)
            rows = read_file(fs, path, stats, cfg.max_record_bytes)
            for row in rows:
                conv.add(row)
                n_in += 1
                if src.limit is not None and n_in >= src.limit:
                    rows.close()
                    break
    if conv is not None:
        parts.append(conv.close())
    reconcile(parts, src, cfg, out)
    dropped: Counter = Counter()
    for p in parts:
        dropped.update(p.dropped)
    n_in, kept = sum(p.n_in for p in parts), sum(p.kept for p in parts)
    if n_in == 0:
        raise IngestError(f"source {src.name}: {src.path} yields no rows")
    if kept == 0:
        log.warning("source %s (%s): every row was quarantined: %s", src.name, src.path, dict(dropped))
    fmt = next((p.preset for p in parts if p.preset), preset or src.format)
    fields = stats.fields or next((p.fields for p in parts if p.fields), {})
    return {"name": src.name, "path": src.path, "format": fmt, "weight": src.weight,
            "files": stats.files[:50], "n_files": len(stats.files), "bytes_read": stats.bytes_read,
            "digest": stats.hasher.hexdigest()[:32], "rows_in": n_in, "kept": kept,
            "dropped": dict(sorted(dropped.items())), "schema": fields,
            **({"split": src.split, "revision": src.revision} if src.path.startswith(("hf:", "disk:")) else {})}


def ingest(cfg: IngestConfig, out: Path) -> Ledger:
    """Read every source into ``out/data`` (records) and ``out/rejects`` (quarantine); return the ledger."""
    out = Path(out)
    ledger = Ledger("ingest")
    lineage = []
    for index, src in enumerate(cfg.sources):
        info = ingest_source(src, cfg, out, index)
        lineage.append(info)
        ledger.n_in += info["rows_in"]
        ledger.kept += info["kept"]
        ledger.dropped.update(info["dropped"])
    for sub, schema in (("data", RECORD_SCHEMA), ("rejects", QUARANTINE_SCHEMA)):
        (out / sub).mkdir(parents=True, exist_ok=True)
        if not shard_paths(out / sub):  # an empty dataset still has its schema on disk
            pq.write_table(schema.empty_table(), out / sub / "part-00000.parquet")
    ledger.extra["sources"] = lineage
    ledger.check()
    return ledger


def _file_fingerprint(fs: Any, path: str, full_below: int = 1 << 20, edge: int = 1 << 16) -> list[Any]:
    """Size, mtime and the bytes (all of a small file; head and tail of a big one)."""
    info = fs.info(path)
    size = info.get("size") or 0
    mtime = info.get("mtime") or info.get("LastModified") or info.get("ETag") or info.get("created")
    h = hashlib.sha256()
    with fs.open(path, "rb") as f:
        if size <= full_below:
            h.update(f.read())
        else:
            h.update(f.read(edge))
            f.seek(size - edge)
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


@task(name="ingest", **IO_RETRIES)
def ingest_task(cfg: PipelineConfig) -> StageOutput:
    """Ingest the configured sources (reusing a finished output of the same sources and config)."""
    # workers changes how fast, never what: it stays out of the key
    settings = cfg.ingest.cache_settings()
    key = digest("ingest", code_version("tasks.ingest", "tasks.core.stage"), settings, [source_fingerprint(s) for s in cfg.ingest.sources])
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
