"""Training steps go to MLflow many at a time: every step's value lands in the run's history, past MLflow's
limit of 1,000 metrics a request, and a non-finite value is skipped rather than failing the batch."""
from __future__ import annotations

import math

from mlflow import MlflowClient

from tasks.track.runs import MAX_METRICS_PER_BATCH, log_steps_fn


def test_many_steps_in_one_write_land_in_the_history(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = MlflowClient(tracking_uri=uri)
    run = client.create_run(client.create_experiment("steps"))
    steps = [({"train_loss": 1.0 / s, "lr": 1e-4, "grad_norm": math.nan if s == 7 else 0.5}, s)
             for s in range(1, 601)]
    assert 3 * len(steps) > MAX_METRICS_PER_BATCH  # more than one request
    log_steps_fn(run.info.run_id, uri)(steps)
    loss = client.get_metric_history(run.info.run_id, "train_loss")
    assert sorted(m.step for m in loss) == list(range(1, 601))
    assert {m.step: m.value for m in loss}[4] == 0.25
    norms = client.get_metric_history(run.info.run_id, "grad_norm")
    assert len(norms) == 599 and 7 not in {m.step for m in norms}
