"""``peftpipe sweep --config SWEEP.yaml [--set section.key=value] [--grid section.key=[v1,v2]]``.

Every variant's config is resolved and validated before Prefect or MLflow start, so a bad key exits with
status 2 at once. Exit status 1 when a variant failed (the others are still trained, compared and logged).
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

DEFAULT_SWEEP = "configs/sweep-sample.yaml"


def register(subparsers: Any) -> None:
    text = "train one adapter per grid point of data/training settings and compare them on one eval set"
    p = subparsers.add_parser("sweep", help=text, description=text)
    p.add_argument("--config", "-c", default=DEFAULT_SWEEP, help=f"sweep YAML (default: {DEFAULT_SWEEP})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a base config value for every variant, e.g. --set train.max_steps=10")
    p.add_argument("--grid", action="append", default=[], metavar="SECTION.KEY=[V1,V2]",
                   help="add or replace a grid axis, e.g. --grid adapter.r=[4,16] (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="list the variants and exit without running them")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from schemas.pipeline import ConfigError
    from schemas.sweep import curation_settings, expand_variants, load_sweep, reference_config
    from tasks.core.stage import digest

    try:
        sweep = load_sweep(args.config, args.overrides, args.grid)
        variants = expand_variants(sweep)
    except ConfigError as exc:
        print(f"peftpipe sweep: {exc}", file=sys.stderr)
        return 2
    curations = {digest("curation", curation_settings(c)) for c in [reference_config(sweep)] +
                 [v.config for v in variants]}
    print(f"sweep {sweep.name!r}: {len(variants)} variants, {len(curations)} distinct curation settings")
    for v in variants:
        print(f"  - {v.name}")
    if args.dry_run:
        return 0
    from flows.runners import on_runner
    from flows.sweep import sweep_flow
    from tasks.sweep.compare import markdown_table, table_columns

    # On the reference config's runner, as every entry point: the variants' tokenize shards go there too
    result = on_runner(sweep_flow, reference_config(sweep).runner)(sweep)
    print("\n" + markdown_table(result.rows, table_columns(result.rows)))
    print(f"comparison: {result.out_dir.resolve()}")
    print(f"MLflow:     parent run {result.parent_run_id}: {result.run_url}  (start the UI with `make ui`)")
    if result.failed:
        print(f"peftpipe sweep: {len(result.failed)} variant(s) failed: {', '.join(result.failed)}", file=sys.stderr)
        return 1
    return 0
