"""The ``peftpipe`` command: run, curate and train the pipeline, plus standalone ingest and dedup tools.

The config is validated before anything is imported or started, so a bad key exits with status 2 at once.
Every failure a user can cause ends with one ``peftpipe: ...`` line and its exit code (README, "Exit codes");
a traceback only with ``--debug`` (or ``PEFTPIPE_DEBUG=1``).
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
                   help="override a config value, e.g. --set dedup.threshold=0.7 (repeatable); list items by "
                        "index or name (ingest.sources.0.path, filters.min_rating.threshold=4)")
    p.add_argument("--debug", action="store_true", help="show tracebacks (also PEFTPIPE_DEBUG=1)")


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


_SETTINGS: list = []


def _use_temporary_server(cfg: PipelineConfig) -> None:
    """Without a configured Prefect server, run against a temporary one that dies with this process."""
    if os.environ.get("PREFECT_API_URL") or os.environ.get("PEFTPIPE_PREFECT_SERVER") == "prefect":
        return
    from tasks.core.recovery import prefect_api_url

    if prefect_api_url():  # the active Prefect profile names a server
        return
    from tasks.core.ephemeral import start_temporary_server
    from tasks.core.storage import local_workdir

    server = start_temporary_server(local_workdir(cfg.workdir) / "logs")  # on local disk, even for s3://
    if server is not None:
        from prefect.settings import PREFECT_API_URL, temporary_settings

        os.environ["PREFECT_API_URL"] = server.url  # child processes (task runners, torchrun) inherit it
        # Prefect read its settings at import: override them for the rest of the process (kept referenced,
        # or the context would be left when it is garbage-collected).
        _SETTINGS.append(temporary_settings({PREFECT_API_URL: server.url}))
        _SETTINGS[-1].__enter__()


def _run_flow(kind: str, cfg: PipelineConfig) -> int:
    if kind == "curate":
        from flows.curate import curate_flow
        from flows.runners import on_runner
        result = on_runner(curate_flow, cfg.runner)(cfg)
        split = result.split.ledger.extra
        print(f"\ncurated: {split.get('train', 0)} train / {split.get('eval', 0)} eval records "
              f"in {result.split.url}")
        return 0
    from flows.pipeline import pipeline_flow
    from flows.runners import on_runner
    from flows.train import train_flow
    result = pipeline_flow(cfg) if kind == "run" else on_runner(train_flow, cfg.runner)(cfg)
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


def _pipeline(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"peftpipe: {exc}", file=sys.stderr)
        return 2
    from tasks.core.recovery import (
        PreflightError,
        bound_mlflow_retries,
        describe_storage_error,
        describe_tracking_error,
        install_log_scrubber,
        preflight,
    )
    install_log_scrubber()  # no token in Prefect's logs or the console
    bound_mlflow_retries(cfg.tracking.lost_after_s)  # before MLflow's first request
    try:  # unreachable servers and paths, unwritable or full workdir: fail before curation or GPU time
        preflight(cfg)
    except PreflightError as exc:
        print(f"peftpipe: {exc}", file=sys.stderr)
        return 3
    _use_temporary_server(cfg)
    try:
        return _run_flow(args.flow, cfg)
    except Exception as exc:  # a full or read-only disk, a lost MLflow server: say so plainly, exit 4 or 5
        storage = describe_storage_error(exc, cfg.workdir) if isinstance(exc, OSError) else None
        message = storage or describe_tracking_error(exc, cfg.tracking.tracking_uri)
        if message is None:
            raise
        print(f"peftpipe: {message}", file=sys.stderr)
        return 4 if storage else 5


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_prefect()  # before anything imports prefect or mlflow
    args = build_parser().parse_args(argv)
    debug = bool(getattr(args, "debug", False) or os.environ.get("PEFTPIPE_DEBUG"))
    from tasks.core.errors import PeftpipeError, quiet_tracebacks

    quiet_tracebacks(debug)
    try:
        return int(args.func(args) or 0) if args.func is not None else _pipeline(args)
    except PeftpipeError as exc:  # a source that cannot be used, nothing left to train on, ...
        print(f"peftpipe: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("peftpipe: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            raise
        print(f"peftpipe: internal error: {type(exc).__name__}: {str(exc)[:500]}\n"
              "(this is a bug; rerun with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
