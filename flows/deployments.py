"""Entry flows of the deployments in ``prefect.yaml``: curate (nightly), train (GPU pool) and pipeline (ad hoc).

Each takes a config *file* (default ``configs/sample.yaml``), ``section.key=value`` overrides, optionally
a whole ``PipelineConfig`` (which the Prefect UI renders as a form), and the task runner of the shard work
(``runner``: local | processes | ray, ``ray_address``; None keeps the config's ``runner`` section); it validates the config before any work
and runs the real ``curate`` / ``train`` flows as subflows. Two pieces of orchestration live here and not in
the plain flows, because they only mean something when a Prefect server is there:

- ``gpu_slot``: a Prefect global concurrency limit named ``gpu`` (created by ``scripts/servers.py setup``
  with one slot per visible GPU of the node) held around training, one slot per GPU the training uses (its
  ranks on this node), so two deployments never train on one GPU at the same time.
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
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.concurrency.sync import concurrency
from prefect.events import emit_event
from prefect.variables import Variable

from flows.curate import CurateResult, curate_flow
from flows.runners import on_runner
from flows.tracked import mlflow_run
from flows.train import TrainResult, train_flow
from schemas.pipeline import PipelineConfig, load_config, validate_config

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
                   cfg: PipelineConfig | None = None, runner: str | None = None,
                   ray_address: str | None = None) -> PipelineConfig:
    """The run's config: ``cfg`` as given, else the file with ``$PEFTPIPE_SET`` and then ``overrides`` applied;
    then ``runner`` / ``ray_address``, where given, replace the config's ``runner.kind`` / ``runner.ray_address``."""
    if cfg is None:
        env = shlex.split(os.environ.get(ENV_OVERRIDES, ""))
        cfg = load_config(config, [*env, *(overrides or [])])
    return with_runner(cfg, runner, ray_address)


def with_runner(cfg: PipelineConfig, runner: str | None, ray_address: str | None) -> PipelineConfig:
    """``cfg`` with the deployment's runner parameters applied (validated like any config value)."""
    if runner is None and ray_address is None:
        return cfg
    section = cfg.runner.model_dump()
    section.update({k: v for k, v in (("kind", runner), ("ray_address", ray_address)) if v is not None})
    data = cfg.model_dump(mode="json", context={"include_secrets": True})
    return validate_config({**data, "runner": section})


def gpu_slots(cfg: PipelineConfig) -> int:
    """Slots of the ``gpu`` limit a training takes: one per rank on this node (every visible GPU by default)."""
    from tasks.train.launch import num_processes

    return num_processes(cfg)


@contextmanager
def gpu_slot(timeout_seconds: float | None = None, occupy: int = 1) -> Iterator[None]:
    """Hold ``occupy`` slots of the ``gpu`` global concurrency limit (a no-op where the limit does not exist)."""
    with concurrency(GPU_LIMIT, occupy=occupy, timeout_seconds=timeout_seconds, strict=False):
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
                      cfg: PipelineConfig | None = None, runner: Literal["local", "processes", "ray"] | None = None,
                      ray_address: str | None = None) -> dict[str, Any]:
    """Curate the configured sources; announce the dataset when its digest is new (that starts training)."""
    overrides = list(overrides or [])
    cfg = resolve_config(config, overrides, cfg, runner, ray_address)
    start_checks(cfg)
    result: CurateResult = on_runner(curate_flow, cfg.runner)(cfg)
    announced = announce_dataset(cfg.name, result.digests, config, overrides)
    get_run_logger().info("dataset digest %s: %s", dataset_digest(result.digests),
                          "new, announced" if announced else "unchanged, no training triggered")
    return {"digests": result.digests, "announced": announced, "split": result.split.url}


@flow(name="peftpipe-train", log_prints=True)
def train_deployment(config: str = DEFAULT_CONFIG, overrides: list[str] | None = None,
                     cfg: PipelineConfig | None = None, runner: Literal["local", "processes", "ray"] | None = None,
                     ray_address: str | None = None) -> dict[str, Any]:
    """Train an adapter on the curated data (curation is reused from its stage cache), one training per GPU."""
    cfg = resolve_config(config, overrides, cfg, runner, ray_address)
    start_checks(cfg)
    with gpu_slot(occupy=gpu_slots(cfg)):
        return summary(on_runner(train_flow, cfg.runner)(cfg))


@flow(name="peftpipe-pipeline", log_prints=True)
def pipeline_deployment(config: str = DEFAULT_CONFIG, overrides: list[str] | None = None,
                        cfg: PipelineConfig | None = None, runner: Literal["local", "processes", "ray"] | None = None,
                        ray_address: str | None = None) -> dict[str, Any]:
    """Curate, then train, in one MLflow run; the GPU slot is held for training only, not for curation."""
    cfg = resolve_config(config, overrides, cfg, runner, ray_address)
    start_checks(cfg)
    # The same composition as flows.pipeline.pipeline_flow, with the GPU slot around the training half.
    with mlflow_run(cfg, "pipeline"):
        curated = on_runner(curate_flow, cfg.runner)(cfg)
        with gpu_slot(occupy=gpu_slots(cfg)):
            return summary(on_runner(train_flow, cfg.runner)(cfg, curated))
