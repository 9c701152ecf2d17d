"""Ingest: every configured source into the one record shape, as Parquet shards, accounting for every row.

Each row read is either kept (``data/``, RECORD_SCHEMA) or quarantined (``rejects/``, QUARANTINE_SCHEMA) with a
reason, its source and its line or row number; ``stats.json`` counts both, per reason. A file that cannot be
read is quarantined whole, as one row (``tasks.ingest.files``). A missing source, or one that yields no rows
at all, is the only error that stops the stage (``IngestError``, exit 6), unless
``ingest.unreadable_files: fail`` asks for a bad file to stop it too.

Record ids are stable across runs and machines (20 hex digits of a SHA-1):
- a row with an id: ``sha1(source name, "id", raw id)`` (``"int_id"`` for an integer id, so ``7`` and ``"7"``
  differ); a second row of the same source with that raw id is quarantined as ``duplicate_id``;
- a row without one: ``sha1(source name, "content", 64 bits of sha1(messages), k)`` where k counts earlier
  rows of the source with identical messages, so identical rows still get distinct ids (exact dedup drops
  them later).
The raw id is kept in ``meta.source_id``. With ``format: auto`` each file gets its own preset (the first of
its leading rows that fits one decides); a hub dataset is one file.

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
from tasks.core.shards import Mapper, stage_mapper
from tasks.core.stage import IO_RETRIES, Ledger, StageOutput, code_version, digest, run_stage, shard_paths
from tasks.ingest.convert import PartResult, RowConverter, content_record_id, detect_preset, record_id
from tasks.ingest.files import SourceReader
from tasks.ingest.listing import IngestError, list_source
from tasks.ingest.parallel import reconcile
from tasks.ingest.presets import resolve_fields
from tasks.ingest.readers import Row, SourceStats, read_hf
from tasks.track.artifacts import publish_markdown

__all__ = ["IngestError", "content_record_id", "ingest", "ingest_source", "ingest_task",
           "lineage_rows", "log_lineage_to_mlflow", "record_id", "source_fingerprint"]

log = logging.getLogger(__name__)


def _hf_rows(src: SourceConfig, stats: SourceStats) -> Iterator[Row]:
    """A hub or saved dataset's rows; a failure part-way (the network went) is a clear IngestError."""
    rows = read_hf(src, stats)
    index = 0
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except IngestError:
            raise
        except Exception as exc:  # noqa: BLE001 - datasets and the hub raise many kinds
            raise IngestError(f"source {src.name}: reading {src.path} failed after {index} rows: "
                              f"{type(exc).__name__}: {str(exc)[:300]}") from None
        index += 1
        yield row


def _ingest_hf(src: SourceConfig, cfg: IngestConfig, out: Path, index: int, stats: SourceStats
               ) -> tuple[list[PartResult], list[dict[str, Any]]]:
    preset = None if src.format == "auto" else src.format
    if preset is None:
        rows = _hf_rows(src, SourceStats())
        try:
            preset = detect_preset(rows, resolve_fields(src.field_map))
        finally:
            rows.close()
    conv = RowConverter(src, cfg, out, f"part-{index:03d}-00000-00000", preset)
    conv.begin_file(preset)
    for row in itertools.islice(_hf_rows(src, stats), src.limit):
        conv.add(row)
    conv.end_file()
    part = conv.close()
    return [part], [{"file": src.path, "format": preset or "per row", "rows": part.n_in, "quarantined": ""}]


# Where to look when a stage rejects an unusual share: the reason -> the config key that usually explains it.
_HINTS = {"oversize": "ingest.max_record_bytes", "rating_out_of_scale": "ingest.sources[{i}].rating_scale",
          "unknown_format": "ingest.sources[{i}].format / field_map", "missing_field":
          "ingest.sources[{i}].format / field_map", "wrong_type": "ingest.sources[{i}].field_map / annotation_map",
          "bad_role": "ingest.sources[{i}].field_map (role)", "duplicate_id": "ingest.sources[{i}].field_map (id)"}
UNUSUAL_SHARE = 0.5


def _warn(src: SourceConfig, index: int, n_in: int, kept: int, dropped: Counter, unmapped: Counter) -> None:
    if kept and (n_in - kept) / n_in > UNUSUAL_SHARE:  # kept == 0 has its own warning
        reason, n = dropped.most_common(1)[0]
        hint = _HINTS.get(reason, "ingest.sources[{i}]").format(i=index)
        log.warning("source %s (%s): %d of %d rows quarantined, most as %s (%d); check %s. Reasons: %s",
                    src.name, src.path, n_in - kept, n_in, reason, n, hint, dict(dropped))
    if unmapped:
        keys = ", ".join(f"{k}={v}" for k, v in unmapped.most_common(8))
        log.warning("source %s (%s): rows carry annotation-like keys that are not mapped, so their ratings or "
                    "labels read as missing: %s. Map them with ingest.sources[%d].annotation_map (e.g. "
                    "{rating: score} or {ratings: scores}).", src.name, src.path, keys, index)


def ingest_source(src: SourceConfig, cfg: IngestConfig, out: Path, index: int, mapper: Mapper | None = None
                  ) -> dict[str, Any]:
    """Convert one source into parts of ``out``; return its lineage (counts per reason, digest, fields, and
    a row per file: what preset it was read with)."""
    stats = SourceStats()
    if src.path.startswith(("hf:", "disk:")):
        parts, files = _ingest_hf(src, cfg, out, index, stats)
    else:
        read = SourceReader(src, cfg, out, index, stats, mapper).read()
        parts, files = read.parts, read.files
    reconcile(parts, src, cfg, out)
    dropped: Counter = Counter()
    unmapped: Counter = Counter()
    for p in parts:
        dropped.update(p.dropped)
        unmapped.update(p.unmapped)
    n_in, kept = sum(p.n_in for p in parts), sum(p.kept for p in parts)
    if n_in == 0:
        raise IngestError(f"source {src.name}: {src.path} yields no rows")
    if kept == 0:
        log.warning("source %s (%s): every row was quarantined: %s", src.name, src.path, dict(dropped))
    _warn(src, index, n_in, kept, dropped, unmapped)
    formats = Counter(f["format"] for f in files if f["format"] != "-")
    fmt = next(iter(formats)) if len(formats) == 1 else \
        "mixed: " + ", ".join(f"{k}={v}" for k, v in formats.most_common()) if formats else src.format
    fields = stats.fields or next((p.fields for p in parts if p.fields), {})
    return {"name": src.name, "path": src.path, "format": fmt, "weight": src.weight,
            "files": stats.files[:50], "n_files": len(stats.files), "bytes_read": stats.bytes_read,
            "digest": stats.digest()[:32], "rows_in": n_in, "kept": kept,
            "dropped": dict(sorted(dropped.items())), "schema": fields, "file_formats": files[:1000],
            **({"unmapped_annotation_keys": dict(unmapped.most_common(20))} if unmapped else {}),
            **({"split": src.split, "revision": src.revision} if src.path.startswith(("hf:", "disk:")) else {})}


def ingest(cfg: IngestConfig, out: Path, mapper: Mapper | None = None) -> Ledger:
    """Read every source into ``out/data`` (records) and ``out/rejects`` (quarantine); return the ledger.
    ``mapper`` reads the files (one task per part) and big files' byte ranges on a task runner (default: in this
    process, big files over a local process pool)."""
    out = Path(out)
    ledger = Ledger("ingest")
    lineage = []
    for index, src in enumerate(cfg.sources):
        info = ingest_source(src, cfg, out, index, mapper)
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
        fs, entries = list_source(src.path)
    except IngestError:
        return digest(src.path, "missing")  # ingest itself raises the clear error
    prints = []
    for e in entries:
        try:
            prints.append(_file_fingerprint(fs, e.path) if e.error is None else [e.path, e.error.reason])
        except OSError as exc:  # unreadable: ingest quarantines it; its error is what there is to hash
            prints.append([e.path, type(exc).__name__, getattr(exc, "errno", None)])
    return digest(src.path, prints)


def lineage_rows(stage: StageOutput) -> list[dict[str, Any]]:
    """One table row per source: where it came from, how much of it was kept, its digest."""
    rows = []
    for s in stage.ledger.extra.get("sources", []):
        rows.append({"source": s["name"], "path": s["path"], "format": s["format"], "files": s["n_files"],
                     "rows_in": s["rows_in"], "kept": s["kept"], "quarantined": s["rows_in"] - s["kept"],
                     "reasons": ", ".join(f"{k}={v}" for k, v in s["dropped"].items()),
                     "digest": s["digest"], "weight": s["weight"]})
    return rows


def _md_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(none)"
    cols = list(rows[0])
    cell = lambda v: str(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    return "\n".join(["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)] +
                     ["| " + " | ".join(cell(r.get(c, "")) for c in cols) + " |" for r in rows])


def file_rows(stage: StageOutput) -> list[dict[str, Any]]:
    """One table row per file read: its source, the preset it was read with, its rows, a file-level reject."""
    return [{"source": s["name"], **f} for s in stage.ledger.extra.get("sources", []) for f in
            s.get("file_formats", [])]


def lineage_markdown(stage: StageOutput) -> str:
    """The lineage artifact: the sources table, then what was detected per file."""
    return ("## Sources\n\n" + _md_table(lineage_rows(stage)) +
            "\n\n## Files (format: the preset each file was read with)\n\n" + _md_table(file_rows(stage)) + "\n")


@task(name="ingest", **IO_RETRIES)
def ingest_task(cfg: PipelineConfig) -> StageOutput:
    """Ingest the configured sources (reusing a finished output of the same sources and config)."""
    # workers changes how fast, never what: it stays out of the key
    settings = cfg.ingest.cache_settings()
    key = digest("ingest", code_version("tasks.ingest", "tasks.core.stage"), settings, [source_fingerprint(s) for s in cfg.ingest.sources])
    mapper = stage_mapper(cfg.runner, "ingest")
    stage = run_stage(cfg.workdir, "ingest", key, lambda tmp: ingest(cfg.ingest, tmp, mapper))
    publish_markdown("ingest-lineage", lineage_markdown(stage), description=f"Sources of config {cfg.name}")
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
