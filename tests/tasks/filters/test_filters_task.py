"""The filter stage as a Prefect task (cache key, reuse, artifacts) and its MLflow report."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from schemas.pipeline import PipelineConfig
from schemas.record import RECORD_SCHEMA
from tasks.core.stage import StageOutput, read_ledger
from tasks.filters import filter_key, filter_publication, filter_task
from tasks.track.runs import log_ledger, publish


def _upstream(tmp_path) -> StageOutput:
    rows = [{"id": f"r{i}", "source": "src one", "meta": "{}",
             "messages": [{"role": "user", "content": "Name a colour."},
                          {"role": "assistant", "content": "Green is a calm colour of leaves."}],
             "annotations": [{"annotator_id": a, "rating": float(r), "labels": []}
                             for a, r in zip("abc", [1 + i % 5, 1 + i % 5, 1 + (i + 1) % 5], strict=True)]}
            for i in range(20)]
    path = tmp_path / "up"
    (path / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, RECORD_SCHEMA), path / "data" / "part-00000.parquet")
    return StageOutput("dedup", "upkey", path)


def _cfg(tmp_path, **filters) -> PipelineConfig:
    return PipelineConfig.model_validate({
        "workdir": str(tmp_path / "work"), "ingest": {"sources": [{"name": "x", "path": "x.jsonl"}]},
        "filters": filters})


def test_task_outside_a_flow_runs_then_reuses(tmp_path):
    up, cfg = _upstream(tmp_path), _cfg(tmp_path)
    first = filter_task.fn(up, cfg)            # outside a flow run: the artifacts are skipped, not an error
    assert first.key == filter_key("upkey", cfg) and (first.path / "report.md").is_file()
    ledger = read_ledger(first.path)
    assert ledger.n_in == 20 and ledger.kept + sum(ledger.dropped.values()) == 20
    stamp = (first.path / "stats.json").stat().st_mtime_ns
    again = filter_task.fn(up, cfg)
    assert again.path == first.path and (again.path / "stats.json").stat().st_mtime_ns == stamp
    other = filter_task.fn(up, _cfg(tmp_path, dry_run=True))
    assert other.key != first.key and read_ledger(other.path).kept == 20


def test_decontamination_sources_are_part_of_the_key(tmp_path):
    evals = tmp_path / "eval.txt"
    evals.write_text("one two three\n")
    cfg = _cfg(tmp_path, filters=[{"name": "decontaminate", "params": {"sources": {"e": str(evals)}}}])
    before = filter_key("k", cfg)
    evals.write_text("one two three four five\n")
    assert filter_key("k", cfg) != before
    assert filter_key("k", _cfg(tmp_path)) == filter_key("k", _cfg(tmp_path))


def test_report_goes_to_the_active_mlflow_run(tmp_path):
    mlflow = pytest.importorskip("mlflow")
    stage = filter_task.fn(_upstream(tmp_path), _cfg(tmp_path))
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("filters-test")
    with pytest.raises(RuntimeError, match="active MLflow run"):
        publish(filter_publication(stage))
    with mlflow.start_run() as run:
        log_ledger(stage)  # the counts, as the curate flow logs every stage's
        publish(filter_publication(stage))
    client = mlflow.MlflowClient(uri)
    metrics = client.get_run(run.info.run_id).data.metrics
    ledger = read_ledger(stage.path)
    alpha = ledger.extra["agreement"]["src one"]["alpha_interval"]
    assert metrics["filter.agreement.src one.alpha_interval"] == pytest.approx(alpha)
    assert "filter.agreement.src one.alpha_ordinal" in metrics
    assert metrics["filter.kept"] == ledger.kept
    for reason, n in ledger.dropped.items():
        assert metrics[f"filter.dropped.{reason}".replace(":", "_")] == n
    assert not [k for k in metrics if "/" in k], "one naming scheme: dotted metric names only"
    names = {a.path for a in client.list_artifacts(run.info.run_id, "filters")}
    assert {"filters/report.md", "filters/report.json"} <= names
    assert json.loads((stage.path / "report.json").read_text())["in"] == 20


@pytest.mark.slow
def test_artifacts_are_published_inside_a_flow(tmp_path, prefect_harness):
    import asyncio

    from prefect import flow
    from prefect.client.orchestration import get_client

    up, cfg = _upstream(tmp_path), _cfg(tmp_path)

    @flow
    def curate() -> StageOutput:
        return filter_task(up, cfg)

    out = curate()
    assert read_ledger(out.path).n_in == 20

    async def keys() -> set[str]:
        async with get_client() as client:
            return {a.key for a in await client.read_artifacts()}
    assert {"filter-drops", "filter-report"} <= asyncio.run(keys())
