"""The whole pipeline: curate, then train, in one MLflow run, each on the task runner ``cfg.runner`` names."""
from __future__ import annotations

from prefect import flow

from flows.curate import curate_flow
from flows.runners import on_runner
from flows.tracked import mlflow_run
from flows.train import TrainResult, train_flow
from schemas.pipeline import PipelineConfig


@flow(name="pipeline", log_prints=True)
def pipeline_flow(cfg: PipelineConfig) -> TrainResult:
    """Curate the configured sources and train an adapter on the result."""
    with mlflow_run(cfg, "pipeline"):
        curated = on_runner(curate_flow, cfg.runner)(cfg)
        return on_runner(train_flow, cfg.runner)(cfg, curated)
