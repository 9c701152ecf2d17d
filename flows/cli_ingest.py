"""``peftpipe ingest SOURCE --out DIR``: convert any supported source into record shards, standalone.

Writes DIR/data (Parquet records), DIR/rejects (the quarantine, with reasons and line numbers) and
DIR/stats.json ``{"in": n, "kept": n, "dropped": {reason: n}}``, then prints the summary. No Prefect,
no MLflow: this is the tool for looking at data before it goes into a pipeline.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from pydantic import ValidationError

FORMATS = ("auto", "messages", "alpaca", "sharegpt", "prompt_completion", "text")


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"{flag} {item!r}: expected KEY=SOURCE_FIELD")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def run_ingest(args: argparse.Namespace) -> int:
    """Ingest one source into args.out; 0 on success, 2 on a bad source or arguments (6 when
    --unreadable-files fail meets a file that cannot be read)."""
    from schemas.ingest import IngestConfig
    from schemas.pipeline import format_validation_error
    from tasks.core.errors import SourceError
    from tasks.core.stage import STATS
    from tasks.ingest.stage import IngestError, ingest

    try:
        src = {"name": args.name, "path": args.source, "format": args.format, "split": args.split,
               "field_map": _pairs(args.field, "--field"), "annotation_map": _pairs(args.annotation, "--annotation"),
               **({"limit": args.limit} if args.limit else {}),
               **({"revision": args.revision} if args.revision else {}), "streaming": args.streaming,
               **({"rating_scale": args.rating_scale} if args.rating_scale else {})}
        cfg = IngestConfig(sources=[src], shard_rows=args.shard_rows, max_record_bytes=args.max_record_bytes,
                           workers=args.workers, unreadable_files=args.unreadable_files)
    except ValidationError as exc:
        print(f"peftpipe ingest: {format_validation_error(exc)}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"peftpipe ingest: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        print(f"peftpipe ingest: --out {out} is a file, not a directory; name a new or empty directory",
              file=sys.stderr)
        return 2
    if out.exists() and any(out.iterdir()):
        if not args.overwrite:
            print(f"peftpipe ingest: {out} is not empty (pass --overwrite to replace it)", file=sys.stderr)
            return 2
        for sub in ("data", "rejects"):
            shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    try:
        ledger = ingest(cfg, out)
    except IngestError as exc:
        print(f"peftpipe ingest: {exc}", file=sys.stderr)
        return 2
    except SourceError as exc:
        print(f"peftpipe ingest: {exc}", file=sys.stderr)
        return exc.exit_code
    stats = {"in": ledger.n_in, "kept": ledger.kept, "dropped": dict(sorted(ledger.dropped.items()))}
    (out / STATS).write_text(json.dumps(stats, indent=2) + "\n")
    (out / "lineage.json").write_text(json.dumps(ledger.extra.get("sources", []), indent=2) + "\n")
    info = ledger.extra["sources"][0]
    print(f"ingested {args.source} (format {info['format']}): in={stats['in']} kept={stats['kept']} "
          f"quarantined={stats['in'] - stats['kept']}")
    for reason, n in stats["dropped"].items():
        print(f"  {reason:<16} {n}")
    print(f"records:    {out / 'data'}\nquarantine: {out / 'rejects'}\nstats:      {out / STATS}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``ingest`` subcommand to the peftpipe CLI."""
    p = subparsers.add_parser("ingest", help="convert a source (file, glob, dir, hf:, disk:, URL) to record shards",
                              description="Convert one source into Parquet record shards, a quarantine of the "
                                          "rows that could not be read (with reasons and line numbers) and "
                                          "stats.json. No Prefect or MLflow involved.")
    p.add_argument("source", metavar="SOURCE", help="file, glob, directory, hf:NAME, disk:PATH or fsspec URL")
    p.add_argument("--format", "-f", default="auto", choices=FORMATS, help="record layout preset (default: auto)")
    p.add_argument("--out", "-o", required=True, help="output directory")
    p.add_argument("--name", default="cli", help="source name, part of every record id (default: cli)")
    p.add_argument("--shard-rows", type=int, default=50_000, help="rows per Parquet shard (default: 50000)")
    p.add_argument("--limit", type=int, default=None, help="read at most this many rows")
    p.add_argument("--split", default="train", help="split of an hf: or disk: dataset (default: train)")
    p.add_argument("--revision", default=None, help="revision of an hf: dataset")
    p.add_argument("--streaming", action="store_true", help="stream an hf: dataset")
    p.add_argument("--field", action="append", default=[], metavar="KEY=FIELD",
                   help="map a record field to a source field, e.g. --field prompt=question (repeatable)")
    p.add_argument("--annotation", action="append", default=[], metavar="KEY=FIELD",
                   help="map an annotation field, e.g. --annotation ratings=scores (repeatable)")
    p.add_argument("--max-record-bytes", type=int, default=1_000_000, help="quarantine larger rows")
    p.add_argument("--workers", type=int, default=0,
                   help="processes for big JSON-lines files (default: one per core; 1: in-process)")
    p.add_argument("--overwrite", action="store_true", help="replace the shards of a non-empty --out")
    p.add_argument("--rating-scale", type=float, nargs=2, metavar=("LOW", "HIGH"), default=None,
                   help="declared rating scale; ratings outside it are quarantined (rating_out_of_scale)")
    p.add_argument("--unreadable-files", choices=("quarantine", "fail"), default="quarantine",
                   help="a file that cannot be read: quarantine it whole and go on (default), or fail (exit 6)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=run_ingest)
