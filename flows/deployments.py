"""Entry flows of the deployments in ``prefect.yaml``: curate (nightly), train (GPU pool) and pipeline (ad hoc).

Each takes a config *file* (default ``configs/sample.yaml``), ``section.key=value`` overrides, and optionally
a whole ``PipelineConfig`` (which the Prefect UI renders as a form); it validates the config before any work
and runs the real ``curate`` / ``train`` flows as subflows. Two pieces of orchestration live here and not in
the plain flows, because they only mean something when a Prefect server is there:

- ``gpu_slot``: a Prefect global concurrency limit named ``gpu`` (created by ``scripts/servers.py setup``
  with one slot per GPU) held around training, so two deployments never train on one GPU at the same time.
- ``start_checks``: the CLI's preflight (servers, workdir) and log scrubbing, first thing in every entry
  flow, so a run against an unreachable MLflow fails before any stage or GPU time.
- ``announce_dataset``: after curation, a ``peftpipe.dataset.curated`` event carrying the dataset digest,
  emitted only when the digest differs from the last one seen; the ``train`` deployment's trigger
  listens for it, so a nightly curation that changed nothing starts no training.
"""
from __future__ import annotations

import hashlib
import json
import os
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect import flow, get_run_logger
from prefect.concurrency.sync import concurrency
from prefect.events import emit_event
from prefect.variables import Variable

from flows.curate import CurateResult, curate_flow
from flows.tracked import mlflow_run
from flows.train import TrainResult, train_flow
from schemas.pipeline import PipelineConfig, load_config

DEFAULT_CONFIG = "configs/sample.yaml"
GPU_LIMIT = "gpu"  # the global concurrency limit's name; one slot per GPU of the node
DATASET_EVENT = "peftpipe.dataset.curated"
# Extra overrides for every run of a work pool, set in its job variables' env (e.g. the MLflow server's URL in
# the production profile), so the deployments' parameters stay the same everywhere. Shell-quoted, space-separated.
ENV_OVERRIDES = "PEFTPIPE_SET"


def start_checks(cfg: PipelineConfig) -> None:
    """What ``peftpipe run`` does before any work, for a deployment run: scrub secrets from every log record
    (the flow run's logs in the Prefect UI included), then raise PreflightError naming an unreachable server
    or an unusable workdir, which fails the flow run before a stage starts."""
    from tasks.core.recovery import install_log_scrubber, preflight

    install_log_scrubber()
    preflight(cfg)


def resolve_config(config: str = DEFAULT_CONFIG, overrides: list[str] | None = None,
                   cfg: PipelineConfig | None = None) -> PipelineConfig:
    """The run's config: ``cfg`` as given, else the file with ``$PEFTPIPE_SET`` and then ``overrides`` applied."""
    if cfg is not None:
        return cfg
    env = shlex.split(os.environ.get(ENV_OVERRIDES, ""))
    return load_config(config, [*env, *(overrides or [])])


@contextmanager
def gpu_slot(timeout_seconds: float | None = None) -> Iterator[None]:
    """Hold one slot of the ``gpu`` global concurrency limit (a no-op where the limit does not exist)."""
    with concurrency(GPU_LIMIT, occupy=1, timeout_seconds=timeout_seconds, strict=False):
        yield


def dataset_digest(digests: dict[str, str]) -> str:
    """One digest for the curated train + eval sets (each already a content digest)."""
    return hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()[:32]


def variable_name(cfg_name: str) -> str:
    """Prefect variable names allow lowercase letters, digits, dashes and underscores."""
    return "peftpipe-dataset-" + "".join(c if c.isalnum() or c in "-_" else "-" for c in cfg_name.lower())


def announce_dataset(cfg_name: str, digests: dict[str, str], config: str, overrides: list[str]) -> bool:
    """Emit ``peftpipe.dataset.curated`` if the curated data differ from the last announced; True if emitted.

    The last digest is a Prefect variable, so it is shared by every worker of the server and survives restarts.
    """
    digest = dataset_digest(digests)
    name = variable_name(cfg_name)
    if Variable.get(name, default=None) == digest:
        return False
    emit_event(
        event=DATASET_EVENT,
        resource={"prefect.resource.id": f"peftpipe.dataset.{cfg_name}", "prefect.resource.name": cfg_name,
                  "peftpipe.digest": digest},
        payload={"digest": digest, "digests": digests, "config": config, "overrides": list(overrides)},
    )
    Variable.set(name, digest, overwrite=True)
    return True


def summary(result: TrainResult) -> dict[str, Any]:
    """A small JSON-able result for the Prefect UI (paths and ids, no big objects)."""
    return {"adapter_dir": str(result.adapter_dir), "mlflow_run_id": result.run_id, "mlflow_run_url": result.run_url,
            "model_uri": result.model_uri,
            "metrics": {k: v for k, v in result.metrics.items() if isinstance(v, (int, float, str))}}


@flow(name="peftpipe-curate", log_prints=True)
def curate_deployment(config: str = DEFAULT_CONFIG, overrides: list[str] | None = None,
                      cfg: PipelineConfig | None = None) -> dict[str, Any]:
    """Curate the configured sources; announce the dataset when its digest is new (that starts training)."""
    overrides = list(overrides or [])
    cfg = resolve_config(config, overrides, cfg)
    start_checks(cfg)
    result: CurateResult = curate_flow(cfg)
    announced = announce_dataset(cfg.name, result.digests, config, overrides)
    get_run_logger().info("dataset digest %s: %s", dataset_digest(result.digests),
                          "new, announced" if announced else "unchanged, no training triggered")
    return {"digests": result.digests, "announced": announced, "split": result.split.url}


@flow(name="peftpipe-train", log_prints=True)
def train_deployment(config: str = DEFAULT_CONFIG, overrides: list[str] | None = None,
                     cfg: PipelineConfig | None = None) -> dict[str, Any]:
    """Train an adapter on the curated data (curation is reused from its stage cache), one training per GPU."""
    cfg = resolve_config(config, overrides, cfg)
    start_checks(cfg)
    with gpu_slot():
        return summary(train_flow(cfg))


@flow(name="peftpipe-pipeline", log_prints=True)
def pipeline_deployment(config: str = DEFAULT_CONFIG, overrides: list[str] | None = None,
                        cfg: PipelineConfig | None = None) -> dict[str, Any]:
    """Curate, then train, in one MLflow run; the GPU slot is held for training only, not for curation."""
    cfg = resolve_config(config, overrides, cfg)
    start_checks(cfg)
    # The same composition as flows.pipeline.pipeline_flow, with the GPU slot around the training half.
    with mlflow_run(cfg, "pipeline"):
        curated = curate_flow(cfg)
        with gpu_slot():
            return summary(train_flow(cfg, curated))
