"""Open the pipeline's MLflow run unless an enclosing flow already did."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import mlflow

from schemas.pipeline import PipelineConfig
from tasks.track.runs import pipeline_run


@contextmanager
def mlflow_run(cfg: PipelineConfig, flow_name: str) -> Iterator[mlflow.ActiveRun]:
    active = mlflow.active_run()
    if active is not None:  # nested under `pipeline`: log into its run
        yield active
        return
    with pipeline_run(cfg, flow_name) as run:
        yield run
