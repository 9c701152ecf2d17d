"""``peftpipe dedup INPUT --text-field F [--id-field F] --threshold T --out MAP.parquet``: near-dedup any dataset.

Reads JSONL, gzipped JSONL and Parquet (files, directories or globs). Writes one row per input record:
``id, cluster_id, is_duplicate`` (plus ``kept`` and ``cluster_size``); ``is_duplicate`` is true for every record
that would be removed, and a record without a near-duplicate is alone in a cluster named by its own id.
Heavy imports wait until the command runs, so ``peftpipe --help`` stays fast.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PARQUET = (".parquet", ".pq")
JSONL = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".ndjson", ".ndjson.gz")


class InputError(ValueError):
    """An input the command cannot read; the message names the file (and line)."""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("dedup", help="find near-duplicates in a JSONL/Parquet dataset (MinHash LSH)",
                              description=__doc__.splitlines()[0])
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="JSONL, JSONL.gz or Parquet files, dirs or globs")
    p.add_argument("--text-field", required=True, help="field holding the text to compare")
    p.add_argument("--id-field", default=None, help="field holding a record id (default: the row number)")
    p.add_argument("--threshold", type=float, default=0.8, help="Jaccard similarity of duplicates (default 0.8)")
    p.add_argument("--out", required=True, help="where to write the map (Parquet)")
    p.add_argument("--shingle", choices=["word", "char"], default="word", help="word or character n-grams")
    p.add_argument("--ngram", type=int, default=5, help="n-gram size (default 5)")
    p.add_argument("--num-perm", type=int, default=128, help="MinHash permutations (default 128)")
    p.add_argument("--keep", choices=["first", "longest"], default="first", help="which record a cluster keeps")
    p.add_argument("--verify", choices=["jaccard", "signature", "none"], default="jaccard",
                   help="check candidates by exact Jaccard (default), the signature estimate, or not at all")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    p.add_argument("--runner", choices=["auto", "local", "processes", "ray"], default="auto",
                   help="processes: a Prefect flow on Prefect's process-pool task runner; ray: Prefect on Ray "
                        "(prefect-ray); local: a plain process pool, no Prefect; auto (default): processes "
                        "when PREFECT_API_URL names a server, else local (a temporary server would cost "
                        "seconds of start-up and keep no record)")
    p.add_argument("--ray-address", default=None, help="Ray cluster address (default: start a local one)")
    p.add_argument("--report", default=None, metavar="DIR", help="also write report.md and cluster_sizes.png here")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="any other DedupConfig field, e.g. --set memory_mb=512 (repeatable)")
    p.set_defaults(func=run)


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
    import pyarrow as pa
    import pyarrow.json as pj
    import pyarrow.parquet as pq

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
    import pyarrow as pa

    cols = {text_field: pa.array([t for _, t in rows], pa.string())}
    if id_field:
        cols[id_field] = pa.array([i for i, _ in rows], pa.string())
    return pa.table(cols)


def check_parquet(path: Path, text_field: str, id_field: str | None) -> None:
    import pyarrow.parquet as pq

    try:
        names = pq.ParquetFile(path).schema_arrow.names
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's input error
        raise InputError(f"{path}: not a readable Parquet file ({exc})") from None
    for field in filter(None, (text_field, id_field)):
        if field not in names:
            raise InputError(f"{path}: no column {field!r} (columns: {', '.join(names)})")


def configured_api_url() -> str | None:
    """PREFECT_API_URL from the environment or the active Prefect profile (what ``prefect config set`` writes),
    read without importing Prefect, which alone takes seconds."""
    import toml  # a dependency of Prefect's; tomllib needs Python 3.11

    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    home = Path(os.environ.get("PREFECT_HOME", Path.home() / ".prefect")).expanduser()
    try:
        profiles = toml.loads((home / "profiles.toml").read_text())
    except (OSError, toml.TomlDecodeError):
        return None
    active = os.environ.get("PREFECT_PROFILE") or profiles.get("active", "ephemeral")
    return profiles.get("profiles", {}).get(active, {}).get("PREFECT_API_URL") or None


def resolve_runner(runner: str) -> str:
    """``auto``: Prefect's process pool when a Prefect server is configured, so the shard-level tasks show in its
    UI; otherwise the plain pool, since a temporary server would be started only to be thrown away."""
    if runner != "auto":
        return runner
    return "processes" if configured_api_url() else "local"


def run(args: argparse.Namespace) -> int:
    """The ``dedup`` command; returns the exit status (2 for bad input or options, 4 for a full disk)."""
    from pydantic import ValidationError

    from schemas.dedup import DedupConfig
    from schemas.pipeline import ConfigError, apply_override, parse_override

    started = time.perf_counter()
    try:
        settings: dict[str, Any] = {"threshold": args.threshold, "shingle": args.shingle, "ngram": args.ngram,
                                    "num_perm": args.num_perm, "keep": args.keep, "verify": args.verify,
                                    "workers": args.workers or os.cpu_count() or 1}
        for item in args.overrides:
            apply_override(settings, *parse_override(item))
        cfg = DedupConfig(**settings)
        paths = expand_inputs(args.inputs)
    except (ValidationError, ConfigError, InputError) as exc:
        print(f"peftpipe dedup: {exc}", file=sys.stderr)
        return 2
    scratch = Path(tempfile.mkdtemp(prefix="peftpipe-dedup-"))
    try:
        parquet: list[Path] = []
        for path in paths:
            if path.name.endswith(PARQUET):
                check_parquet(path, args.text_field, args.id_field)
                parquet.append(path)
            else:
                sub = scratch / "input" / f"{len(parquet):04d}"
                sub.mkdir(parents=True)
                parquet += jsonl_to_parquet(path, args.text_field, args.id_field, sub, cfg.unit_rows)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        report_dir = Path(args.report) if args.report else scratch / "report"
        kwargs = dict(cfg=cfg, text_field=args.text_field, id_field=args.id_field, report=bool(args.report))
        runner = resolve_runner(args.runner)
        if runner == "local":
            from tasks.dedup.steps import dedup_dir
            stats = dedup_dir(parquet, out=report_dir, stage=None, kind="near", map_path=out, **kwargs)
        else:
            from flows.dedup import run_dedup_flow
            stats = run_dedup_flow(runner, cfg.workers, args.ray_address, inputs=[str(p) for p in parquet],
                                   out=str(report_dir), map_path=str(out), **kwargs)
    except InputError as exc:
        print(f"peftpipe dedup: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        from tasks.core.recovery import is_disk_full
        if not is_disk_full(exc):
            raise
        print(f"peftpipe dedup: {exc.strerror or exc}. Point TMPDIR (or --report DIR, which also holds the work "
              "files) at a disk with more room; nothing was written to --out.", file=sys.stderr)
        return 4
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    seconds = time.perf_counter() - started
    print(f"{stats['in_rows']} records, {stats['dropped']} duplicates in {stats['clusters']} clusters "
          f"({stats.get('bands')}x{stats.get('rows')} LSH, {stats.get('candidate_pairs', 0)} candidate pairs, "
          f"{stats.get('edges', 0)} verified) in {seconds:.1f}s -> {out}")
    return 0
