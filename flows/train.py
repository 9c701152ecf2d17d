"""The training flow: tokenize + pack -> train a LoRA/QLoRA adapter -> evaluate -> log and register.

With ``train.objective: dpo | kto`` the curated pairs (examples) are tokenized per side, trained on with the
preference recipe and evaluated on the held-out pairs against the base; logging and registering are the same."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from prefect import flow, get_run_logger

from flows.curate import CurateResult, curate_flow
from flows.runners import on_runner
from flows.tracked import mlflow_run
from schemas.pipeline import PipelineConfig
from tasks.core import storage
from tasks.core.errors import require_tokenized
from tasks.evaluate.leakcheck import holdout_eval_sets_task
from tasks.evaluate.preference import preference_evaluate_task
from tasks.evaluate.report import log_task_results
from tasks.evaluate.stage import evaluate_task
from tasks.preference.tokenize import preference_tokenize_task
from tasks.tokenize.stage import tokenize_task
from tasks.track import runs as tracking
from tasks.track.artifacts import publish_link
from tasks.track.model_registry import log_adapter_model, model_id_of
from tasks.train.model import prepare_base_model_task
from tasks.train.preference import preference_train_task
from tasks.train.recipe import train_task


@dataclass(frozen=True)
class TrainResult:
    adapter_dir: Path
    run_id: str
    run_url: str
    model_uri: str | None
    metrics: dict[str, Any]


@flow(name="train", log_prints=True)
def train_flow(cfg: PipelineConfig, curated: CurateResult | None = None) -> TrainResult:
    """Train an adapter on the curated split (curating first, from cache when possible, if none is given)."""
    storage.configure(cfg.storage)
    # Stage outputs (tokenize included) go to the workdir, an s3:// one too; the base model, checkpoints and
    # the adapter stay on local disk (storage.local_workdir), and training reads the tokenized rows from this
    # machine's mirror of the tokenize stage (StageOutput.path).
    local = storage.with_local_workdir(cfg)
    log = get_run_logger()
    with mlflow_run(cfg, "train") as run:
        if curated is None:
            curated = on_runner(curate_flow, cfg.runner)(cfg)
        if cfg.train.objective == "sft":
            split = holdout_eval_sets_task(curated.split, cfg)  # separate eval sets never reach training
            if split.key != curated.split.key:
                tracking.log_ledger(split)
            base = prepare_base_model_task(local, split)
            tokenized = tokenize_task(split, base, cfg)  # NothingToTrainError when it rejected every record
            require_tokenized(tokenized, cfg.split.eval_fraction)  # before any training time is spent
            tracking.log_ledger(tokenized)
            tracking.log_tokenized_dataset(tokenized, cfg.name)
            trained = train_task(tokenized, base, local, run.info.run_id)
            evaluate = lambda adapter: evaluate_task(tokenized, base, adapter, cfg, split)  # noqa: E731
        else:
            base = prepare_base_model_task(local, curated.split)
            tokenized = preference_tokenize_task(curated.split, base, cfg)
            tracking.log_ledger(tokenized)
            trained = preference_train_task(tokenized, base, local, run.info.run_id)
            evaluate = lambda adapter: preference_evaluate_task(tokenized, base, adapter, cfg)  # noqa: E731
        adapter_dir = Path(trained["adapter_dir"])
        if cfg.train.node_rank > 0:  # multi-node: node 0's run evaluates, logs and registers the adapter
            log.info("node %d of %d: training done; node 0 evaluates and registers", cfg.train.node_rank,
                     cfg.train.nnodes)
            return TrainResult(adapter_dir, run.info.run_id, "", None, trained)
        evaluation = evaluate(adapter_dir)
        mlflow.log_metrics({f"final.{k}": float(v) for k, v in {**trained, **evaluation}.items()
                            if isinstance(v, (int, float)) and not isinstance(v, bool)})
        mlflow.log_artifacts(str(adapter_dir), artifact_path="adapter")
        model_uri = log_adapter_model(adapter_dir, base, cfg)
        # After the model is logged: MLflow 3 links each task metric to its LoggedModel and eval set.
        log_task_results(evaluation, cfg.name, model_id_of(model_uri), step=int(trained["steps"]),
                         table_rows=cfg.evaluate.table_rows)
        url = tracking.run_url(run, cfg.tracking.tracking_uri)
        publish_link("mlflow-run", url, f"MLflow run {run.info.run_id}", description="Where this run is tracked")
        log.info("adapter: %s", adapter_dir)
        log.info("MLflow run %s: %s", run.info.run_id, url)
    return TrainResult(adapter_dir, run.info.run_id, url, model_uri, {**trained, **evaluation})
