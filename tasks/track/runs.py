"""MLflow tracking of a pipeline run: the resolved config, each stage's ledger, the curated dataset, the adapter.

One MLflow run per pipeline run. Per-step training metrics are logged by the train task through the run id,
so they work from any thread or process (see ``log_steps_fn``).
"""
from __future__ import annotations

import hashlib
import json
import math
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pyarrow as pa
from mlflow import MlflowClient
from mlflow.entities import Metric

from schemas.pipeline import PipelineConfig
from tasks.core import recovery, storage
from tasks.core.publication import Publication, metric_key
from tasks.core.stage import StageOutput, iter_batches, read_table


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """Flatten a nested config into dotted keys; lists and dicts of lists become JSON strings."""
    out: dict[str, str] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}{k}."))
    else:
        value = json.dumps(data) if isinstance(data, list) else str(data)
        out[prefix[:-1]] = value[:6000]
    return out


def git_commit(cwd: str | Path = ".") -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                              timeout=5, check=True).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# The experiment tag MLflow's UI reads for an experiment's kind; "custom_model_development" is the model
# training ("Machine learning") kind, as opposed to "genai_development" (from the UI's ExperimentKind enum).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"
# MLflow 3.1x's UI picks the view from ``?workflowType=`` (else the browser's last choice, GenAI at first),
# so every link we print names the model-training view as well.
UI_QUERY = "?workflowType=machine_learning"


def configure(cfg: PipelineConfig) -> None:
    mlflow.set_tracking_uri(cfg.tracking.tracking_uri)
    experiment = mlflow.set_experiment(cfg.tracking.experiment)
    if EXPERIMENT_KIND_TAG not in (experiment.tags or {}):  # a kind the user chose in the UI is kept
        mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)


@contextmanager
def pipeline_run(cfg: PipelineConfig, flow_name: str) -> Iterator[mlflow.ActiveRun]:
    """Start the MLflow run of one pipeline run; mark it FAILED if the body raises (or is interrupted)."""
    configure(cfg)
    recovery.mark_stale_runs_failed(cfg.tracking.tracking_uri, cfg.tracking.experiment)  # killed attempts
    name = cfg.tracking.run_name or f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    tags = {"peftpipe.flow": flow_name, "peftpipe.config": cfg.name, **recovery.owner_tags()}
    if commit := git_commit():
        tags["mlflow.source.git.commit"] = commit
    run = mlflow.start_run(run_name=name, tags=tags, log_system_metrics=True)  # CPU, memory (GPU with pynvml)
    try:
        mlflow.log_params(recovery.scrub_params(flatten(cfg.model_dump(mode="json"))))
        yield run
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    else:
        mlflow.end_run(status="FINISHED")


def log_ledger(stage: StageOutput) -> None:
    """Log a stage's ledger as metrics ``<stage>.in``, ``<stage>.kept``, ``<stage>.dropped.<reason>``."""
    ledger = stage.ledger
    metrics = {metric_key(stage.name, "in"): ledger.n_in, metric_key(stage.name, "kept"): ledger.kept}
    for reason, n in ledger.dropped.items():
        metrics[metric_key(stage.name, "dropped", reason)] = n
    for k, v in ledger.extra.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            metrics[metric_key(stage.name, k)] = v
    mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
    mlflow.log_artifact(str(stage.path / "stats.json"), artifact_path=f"ledgers/{stage.name}")


def publish(publication: Publication) -> None:
    """Send a stage report's metrics, files and tables to the ACTIVE MLflow run: the one way reports reach it."""
    if mlflow.active_run() is None:
        raise RuntimeError("publishing a stage report needs an active MLflow run (mlflow.start_run())")
    if publication.metrics:
        mlflow.log_metrics({k: float(v) for k, v in publication.metrics.items()})
    for path, folder in publication.files:
        if Path(path).exists():
            mlflow.log_artifact(str(path), artifact_path=folder)
    for columns, artifact_file in publication.tables:
        mlflow.log_table(data=columns, artifact_file=artifact_file)


def content_digest(directory: Path) -> str:
    """Digest of a record dataset's ids and messages, independent of how it is sharded."""
    h = hashlib.sha256()
    for batch in iter_batches(directory, columns=["id", "messages"]):
        for rid, msgs in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist()):
            h.update(rid.encode())
            h.update(json.dumps(msgs, sort_keys=True).encode())
    return h.hexdigest()[:32]


def _at_rest(stage: StageOutput, part: str) -> str:
    """Where a stage's part lives at rest, as the dataset's source: its URL on an object store (not this
    machine's mirror of it), else its absolute local path."""
    if storage.is_remote(stage.url):
        return storage.join(stage.url, part)
    return str(stage.data(part).resolve())


def log_curated_dataset(split: StageOutput, name: str, preview_rows: int = 1000) -> dict[str, str]:
    """Log the curated train and eval sets as ``mlflow.data`` inputs with explicit content digests.

    Only a preview is materialised for MLflow's schema and profile; the digest covers every row.
    """
    digests = {}
    for part, context in (("train", "training"), ("eval", "evaluation")):
        directory = split.data(part)
        digests[part] = content_digest(directory)
        preview = read_table(directory, columns=["id", "source", "messages"]).slice(0, preview_rows).to_pandas()
        preview["messages"] = preview["messages"].map(lambda m: json.dumps(list(m)))
        with warnings.catch_warnings():  # a local path matches two equivalent source resolvers
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_pandas(preview, source=_at_rest(split, part), name=f"{name}-{part}",
                                              digest=digests[part])
        mlflow.log_input(dataset, context=context)
    return digests


def files_digest(directory: Path) -> str:
    """Digest of a shard directory's bytes (stage outputs are written deterministically)."""
    h = hashlib.sha256()
    for path in sorted(Path(directory).glob("*.parquet")):
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:32]


def log_tokenized_dataset(tokenized: StageOutput, name: str, preview_rows: int = 1000) -> str:
    """Log the packed training rows as an ``mlflow.data`` input (context ``tokenized``) with a byte digest."""
    directory = tokenized.data("train")
    digest_ = files_digest(directory)
    wanted = ("num_tokens", "num_seqs", "num_loss_tokens")
    batch = next(iter_batches(directory, batch_size=preview_rows), None)
    if batch is None:
        preview = pd.DataFrame(columns=list(wanted))
    else:
        preview = pa.Table.from_batches([batch]).select([c for c in wanted if c in batch.schema.names]).to_pandas()
    with warnings.catch_warnings():  # a local path matches two equivalent source resolvers
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_pandas(preview, source=_at_rest(tokenized, "train"), name=f"{name}-tokenized-train",
                                          digest=digest_)
    mlflow.log_input(dataset, context="tokenized")
    return digest_


def log_steps_fn(run_id: str, tracking_uri: str | None = None
                 ) -> Callable[[list[tuple[dict[str, float], int]]], None]:
    """A thread-safe logger of training steps bound to one run (the fluent API's active run is thread-local):
    each call writes the metrics of all the steps it is given in as few ``log_batch`` requests as MLflow's
    limit of 1,000 metrics a request allows.

    Non-finite values (a NaN grad norm, say) are skipped rather than failing the batch.
    """
    client = MlflowClient(tracking_uri=tracking_uri)

    def log(steps: list[tuple[dict[str, float], int]]) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(metric_key(k), float(v), now, step) for metrics, step in steps for k, v in metrics.items()
                 if v is not None and math.isfinite(float(v))]
        for at in range(0, len(batch), MAX_METRICS_PER_BATCH):
            client.log_batch(run_id, metrics=batch[at:at + MAX_METRICS_PER_BATCH])
    return log


MAX_METRICS_PER_BATCH = 1000  # MLflow's limit for one log_batch request


def run_url(run: mlflow.ActiveRun | Any, tracking_uri: str, ui_url: str = "http://127.0.0.1:5000") -> str:
    """Where to look at the run in the MLflow UI (started with ``make ui``)."""
    info = run.info
    base = tracking_uri if tracking_uri.startswith("http") else ui_url
    return f"{base}/#/experiments/{info.experiment_id}/runs/{info.run_id}{UI_QUERY}"
