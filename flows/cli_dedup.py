"""``peftpipe dedup INPUT --text-field F [--id-field F] --threshold T --out MAP.parquet``: near-dedup any dataset.

Reads JSONL, gzipped JSONL and Parquet (files, directories or globs). Writes one row per input record:
``id, cluster_id, is_duplicate`` (plus ``kept`` and ``cluster_size``); ``is_duplicate`` is true for every record
that would be removed, and a record without a near-duplicate is alone in a cluster named by its own id.
Heavy imports wait until the command runs, so ``peftpipe --help`` stays fast.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, get_args

from schemas.dedup import DedupConfig  # pydantic only: defaults and choices come from the schema


def _default(name: str) -> Any:
    return DedupConfig.model_fields[name].default


def _choices(name: str) -> list[str]:
    return list(get_args(DedupConfig.model_fields[name].annotation))


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("dedup", help="find near-duplicates in a JSONL/Parquet dataset (MinHash LSH)",
                              description=__doc__.splitlines()[0])
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="JSONL, JSONL.gz or Parquet files, dirs or globs")
    p.add_argument("--text-field", required=True, help="field holding the text to compare")
    p.add_argument("--id-field", default=None, help="field holding a record id (default: the row number)")
    p.add_argument("--threshold", type=float, default=_default("threshold"),
                   help=f"Jaccard similarity of duplicates (default {_default('threshold')})")
    p.add_argument("--out", required=True, help="where to write the map (Parquet)")
    p.add_argument("--shingle", choices=_choices("shingle"), default=_default("shingle"),
                   help="word or character n-grams")
    p.add_argument("--ngram", type=int, default=_default("ngram"), help=f"n-gram size (default {_default('ngram')})")
    p.add_argument("--num-perm", type=int, default=_default("num_perm"),
                   help=f"MinHash permutations (default {_default('num_perm')})")
    p.add_argument("--keep", choices=_choices("keep"), default=_default("keep"),
                   help=f"which record a cluster keeps (default {_default('keep')}: the highest mean rating "
                        "of an `annotations` column; ties, and inputs without ratings, keep the lowest id)")
    p.add_argument("--verify", choices=_choices("verify"), default=_default("verify"),
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

    from schemas.pipeline import ConfigError, apply_override, parse_override
    from tasks.dedup.inputs import InputError, expand_inputs, to_parquet_inputs

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
        parquet = to_parquet_inputs(paths, args.text_field, args.id_field, scratch, cfg.unit_rows)
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
