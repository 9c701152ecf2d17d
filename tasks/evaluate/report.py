"""Task metrics into MLflow: run metrics per metric and family, the same metrics on the adapter's LoggedModel
(with the eval set as their dataset), and a table of prompts, references and both models' answers.

Names: ``task/<eval set>/<metric>`` and ``task/<eval set>/<family>/<metric>`` for the adapter,
``base_task/...`` for the base model (see ``tasks.evaluate.scoring.flat_metrics``). Passing ``model_id`` to
``mlflow.log_metrics`` is MLflow 3's way of attaching a metric to a LoggedModel, so the experiment's Models
tab ranks adapters by task score; ``dataset`` records which eval set (name and digest) it was measured on.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from typing import Any

import mlflow
import pandas as pd

from tasks.evaluate.scoring import flat_metrics


def eval_dataset(result: dict[str, Any], prefix: str):
    """The scored items of one eval set as an ``mlflow.data`` dataset, with a digest of their content."""
    items = result.get("items") or []
    frame = pd.DataFrame({k: [it.get(k) for it in items] for k in ("id", "family", "prompt", "reference")})
    h = hashlib.sha256()
    for row in frame.itertuples(index=False):
        h.update(json.dumps(list(row), ensure_ascii=False).encode())
    with warnings.catch_warnings():  # a local path matches two equivalent source resolvers
        warnings.simplefilter("ignore", UserWarning)
        return mlflow.data.from_pandas(frame, source=result.get("source") or result["name"],
                                       name=f"{prefix}-eval-{result['name']}", digest=h.hexdigest()[:32])


def answer_table(result: dict[str, Any], max_rows: int) -> dict[str, list[Any]]:
    """Columns prompt, reference, base, adapter (and id, family, per-item scores) of up to ``max_rows`` items."""
    items = (result.get("items") or [])[:max_rows]
    keys = list(dict.fromkeys(["id", "family", "prompt", "reference", "base", "adapter",
                               *(k for it in items for k in it)]))
    return {k: [it.get(k) for it in items] for k in keys}


def log_task_results(evaluation: dict[str, Any], prefix: str, model_id: str | None = None,
                     step: int | None = None, table_rows: int = 200) -> dict[str, float]:
    """Log every eval set's task metrics into the active run (linked to ``model_id`` and the eval set's
    dataset when given), and its answers as ``eval/<set>_answers.json``. Returns the metrics logged."""
    logged: dict[str, float] = {}
    for result in evaluation.get("task") or []:
        metrics = flat_metrics([result])
        if not metrics:
            continue
        dataset = eval_dataset(result, prefix)
        mlflow.log_input(dataset, context="evaluation")
        mlflow.log_metrics(metrics, step=step, model_id=model_id, dataset=dataset)
        logged.update(metrics)
        ledger = {"rows": result["rows"], "scored": result["scored"], **{f"skipped.{k}": v for k, v in
                                                                            result.get("skipped", {}).items()}}
        mlflow.log_metrics({f"eval_set/{result['name']}/{k}": float(v) for k, v in ledger.items()}, step=step)
        if table_rows and result.get("items"):
            path = f"eval/{result['name']}_answers.json"
            if not _artifact_exists(path):  # log_table appends to an existing file; a rerun must not double it
                mlflow.log_table(answer_table(result, table_rows), artifact_file=path)
    return logged


def _artifact_exists(path: str) -> bool:
    run = mlflow.active_run()
    if run is None:
        return False
    parent, _, name = path.rpartition("/")
    return any(a.path == path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, parent or None))
