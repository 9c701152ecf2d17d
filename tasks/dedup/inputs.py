"""Inputs of the standalone ``peftpipe dedup`` command: files, directories and globs of JSONL or Parquet, as
Parquet shards the dedup steps read (columns: the text field and, if given, the id field).

Arrow's JSON reader converts plain files; a Python line reader takes over where types are mixed, and names the
file and line of a bad record (``InputError``).
"""
from __future__ import annotations

import glob
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.json as pj
import pyarrow.parquet as pq

PARQUET = (".parquet", ".pq")
JSONL = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".ndjson", ".ndjson.gz")


class InputError(ValueError):
    """An input the command cannot read; the message names the file (and line)."""


def expand_inputs(items: list[str]) -> list[Path]:
    """Files named, found under directories, or matched by globs, in a stable order."""
    paths: list[Path] = []
    for item in items:
        matches = sorted(glob.glob(item)) if any(c in item for c in "*?[") else [item]
        if not matches:
            raise InputError(f"{item}: no file matches")
        for m in map(Path, matches):
            if m.is_dir():
                found = sorted(p for p in m.rglob("*") if p.is_file() and p.name.endswith(PARQUET + JSONL))
                if not found:
                    raise InputError(f"{m}: no JSONL or Parquet files inside")
                paths += found
            elif m.is_file():
                paths.append(m)
            else:
                raise InputError(f"{m}: no such file or directory")
    return paths


def _jsonl_lines(path: Path, text_field: str, id_field: str | None):
    """Python fallback: yields (id, text) per line, with a clear error naming the bad line."""
    import gzip

    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise InputError(f"{path}:{n}: a JSON object per line expected")
            text = row.get(text_field)
            rid = row.get(id_field) if id_field else None
            if id_field and rid is None:
                raise InputError(f"{path}:{n}: no id field {id_field!r}")
            yield (None if rid is None else str(rid),
                   text if isinstance(text, str) or text is None else json.dumps(text))


def jsonl_to_parquet(path: Path, text_field: str, id_field: str | None, out_dir: Path, shard_rows: int) -> list[Path]:
    """Convert a (gzipped) JSONL file to Parquet shards with columns id (if given) and text."""
    names = [text_field] + ([id_field] if id_field else [])
    written: list[Path] = []

    def flush(table: pa.Table) -> None:
        target = out_dir / f"{len(list(out_dir.iterdir())):06d}.parquet"
        pq.write_table(table, target)
        written.append(target)

    for id_type in (pa.string(), pa.int64()):  # Arrow's fast reader, when the types are this simple
        schema = pa.schema([(text_field, pa.string())] + ([(id_field, id_type)] if id_field else []))
        try:
            reader = pj.open_json(pa.input_stream(str(path), compression="detect"),
                                  read_options=pj.ReadOptions(block_size=8 << 20),
                                  parse_options=pj.ParseOptions(explicit_schema=schema,
                                                                unexpected_field_behavior="ignore"))
            tables = [pa.Table.from_batches([b]) for b in reader]
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
        table = pa.concat_tables(tables) if tables else schema.empty_table()
        if id_field and table.column(id_field).null_count:
            break  # a record without an id: let the line reader name it
        table = table.select(names).cast(pa.schema([(n, pa.string()) for n in names]))
        for lo in range(0, max(table.num_rows, 1), shard_rows):
            flush(table.slice(lo, shard_rows))
        return written
    rows: list[tuple[str | None, str | None]] = []
    for row in _jsonl_lines(path, text_field, id_field):
        rows.append(row)
        if len(rows) >= shard_rows:
            flush(_rows_table(rows, text_field, id_field))
            rows = []
    flush(_rows_table(rows, text_field, id_field))
    return written


def _rows_table(rows: list, text_field: str, id_field: str | None):
    cols = {text_field: pa.array([t for _, t in rows], pa.string())}
    if id_field:
        cols[id_field] = pa.array([i for i, _ in rows], pa.string())
    return pa.table(cols)


def check_parquet(path: Path, text_field: str, id_field: str | None) -> None:
    try:
        names = pq.ParquetFile(path).schema_arrow.names
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's input error
        raise InputError(f"{path}: not a readable Parquet file ({exc})") from None
    for field in filter(None, (text_field, id_field)):
        if field not in names:
            raise InputError(f"{path}: no column {field!r} (columns: {', '.join(names)})")




def to_parquet_inputs(paths: list[Path], text_field: str, id_field: str | None, scratch: Path,
                      shard_rows: int) -> list[Path]:
    """Parquet files as they are (their columns checked); JSONL converted into shards under ``scratch``."""
    parquet: list[Path] = []
    for path in paths:
        if path.name.endswith(PARQUET):
            check_parquet(path, text_field, id_field)
            parquet.append(path)
        else:
            sub = scratch / "input" / f"{len(parquet):04d}"
            sub.mkdir(parents=True)
            parquet += jsonl_to_parquet(path, text_field, id_field, sub, shard_rows)
    return parquet
