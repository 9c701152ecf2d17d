"""The ``peftpipe`` command: run, curate and train the pipeline, plus standalone ingest and dedup tools.

The config is validated before anything is imported or started, so a bad key exits with status 2 at once.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import warnings
from collections.abc import Sequence

from schemas.pipeline import ConfigError, PipelineConfig, load_config

DEFAULT_CONFIG = "configs/sample.yaml"
# Standalone tools live in their own modules; each exposes register(subparsers).
TOOL_MODULES = ("flows.cli_ingest", "flows.cli_dedup", "flows.cli_sweep", "flows.cli_masks")


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", default=DEFAULT_CONFIG, help=f"YAML config (default: {DEFAULT_CONFIG})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. --set dedup.threshold=0.7 (repeatable)")


# Offline and quiet by default; the tests set the same (tests/conftest.py calls offline_env_defaults).
ENV_DEFAULTS = {
    # The temporary Prefect server prints shutdown tracebacks after a successful run; errors still surface
    # through the flow's own exception.
    "PREFECT_SERVER_LOGGING_LEVEL": "ERROR",
    # No telemetry calls that can only fail and log errors on an offline machine.
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "0.5",
    # Library chatter (progress bars, deprecation notices) would bury the stage summaries.
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "TOKENIZERS_PARALLELISM": "false",
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    # The temporary server's first start migrates its SQLite database; 20 s is too tight on 2 busy cores.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}


def offline_env_defaults() -> None:
    """Set ENV_DEFAULTS where the user has not; must run before prefect or mlflow is imported."""
    for key, value in ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


def _quiet_prefect() -> None:
    offline_env_defaults()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
    logging.getLogger("mlflow").setLevel(logging.WARNING)


def _run_flow(kind: str, cfg: PipelineConfig) -> int:
    if kind == "curate":
        from flows.curate import curate_flow
        result = curate_flow(cfg)
        split = result.split.ledger.extra
        print(f"\ncurated: {split.get('train', 0)} train / {split.get('eval', 0)} eval records "
              f"in {result.split.path}")
        return 0
    from flows.pipeline import pipeline_flow
    from flows.train import train_flow
    result = (pipeline_flow if kind == "run" else train_flow)(cfg)
    print(f"\nadapter:    {result.adapter_dir.resolve()}")
    print(f"MLflow run: {result.run_id} ({cfg.tracking.tracking_uri}, experiment {cfg.tracking.experiment!r})")
    print(f"            {result.run_url}  (start the UI with `make ui`)")
    if result.model_uri:
        print(f"model:      {result.model_uri}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="peftpipe", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    helps = {"run": "curate the data and train an adapter (the whole pipeline)",
             "curate": "ingest, deduplicate, filter and split the data",
             "train": "tokenize, train, evaluate and log an adapter (curating first if needed)"}
    for name, text in helps.items():
        p = sub.add_parser(name, help=text, description=text)
        _add_config_args(p)
        p.set_defaults(func=None, flow=name)
    for module in TOOL_MODULES:
        try:
            importlib.import_module(module).register(sub)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_prefect()  # before anything imports prefect or mlflow
    args = build_parser().parse_args(argv)
    if args.func is not None:
        return int(args.func(args) or 0)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"peftpipe: {exc}", file=sys.stderr)
        return 2
    from tasks.core.recovery import (
        PreflightError,
        describe_storage_error,
        describe_tracking_error,
        install_log_scrubber,
        preflight,
    )
    install_log_scrubber()  # no token in Prefect's logs or the console
    try:  # unreachable servers, unwritable or full workdir: fail before curation or GPU time
        preflight(cfg)
    except PreflightError as exc:
        print(f"peftpipe: {exc}", file=sys.stderr)
        return 3
    try:
        return _run_flow(args.flow, cfg)
    except Exception as exc:  # a full or read-only disk, a lost MLflow server: say so plainly, exit 4 or 5
        storage = describe_storage_error(exc, cfg.workdir) if isinstance(exc, OSError) else None
        message = storage or describe_tracking_error(exc, cfg.tracking.tracking_uri)
        if message is None:
            raise
        print(f"peftpipe: {message}", file=sys.stderr)
        return 4 if storage else 5


if __name__ == "__main__":
    sys.exit(main())
