"""The ingest task (stage key, reuse), its lineage rows, MLflow dataset lineage and the CLI.

The Prefect table artifact itself is exercised by the end-to-end flow test (a Prefect server per test is
too slow here)."""
from __future__ import annotations

import json

import pytest

from flows.cli import main as cli_main
from schemas.pipeline import validate_config
from tasks.ingest.stage import ingest_task, lineage_rows, log_lineage_to_mlflow

CHAT = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]


def make_cfg(tmp_path, path):
    return validate_config({"workdir": str(tmp_path / "work"),
                            "ingest": {"sources": [{"name": "a", "path": str(path), "weight": 0.5}]},
                            "tracking": {"tracking_uri": f"sqlite:///{tmp_path / 'mlruns.db'}"}})


@pytest.fixture
def source(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text(json.dumps({"id": "1", "messages": CHAT}) + "\n{broken\n")
    return p


def test_task_reuses_output_until_the_source_changes(tmp_path, source):
    cfg = make_cfg(tmp_path, source)
    first = ingest_task.fn(cfg)
    assert first.ledger.kept == 1 and first.ledger.dropped == {"invalid_json": 1}
    (first.path / "marker").write_text("")
    again = ingest_task.fn(cfg)
    assert again.path == first.path and (again.path / "marker").exists()  # reused, not recomputed
    source.write_text(json.dumps({"id": "1", "messages": CHAT}) + "\n")
    changed = ingest_task.fn(cfg)
    assert changed.key != first.key and changed.ledger.n_in == 1
    row = lineage_rows(first)[0]
    assert row["source"] == "a" and row["rows_in"] == 2 and row["quarantined"] == 1 and row["weight"] == 0.5
    assert row["reasons"] == "invalid_json=1"


def test_lineage_is_logged_to_the_active_mlflow_run(tmp_path, source):
    import mlflow
    from mlflow import MlflowClient

    cfg = make_cfg(tmp_path, source)
    stage = ingest_task.fn(cfg)
    mlflow.set_tracking_uri(cfg.tracking.tracking_uri)
    mlflow.set_experiment("ingest-test")
    with mlflow.start_run() as run:
        log_lineage_to_mlflow(stage)
    inputs = MlflowClient(cfg.tracking.tracking_uri).get_run(run.info.run_id).inputs.dataset_inputs
    assert len(inputs) == 1
    ds = inputs[0].dataset
    src = stage.ledger.extra["sources"][0]
    assert ds.name == "a" and ds.digest == src["digest"]
    assert json.loads(ds.source)["uri"] == str(source.resolve())
    assert "messages" in ds.schema
    tags = {t.key: t.value for t in inputs[0].tags}
    assert tags["rows_in"] == "2" and tags["rows_kept"] == "1" and tags["mlflow.data.context"] == "ingest"


def test_cli_writes_shards_quarantine_and_stats(tmp_path, source, capsys):
    out = tmp_path / "out"
    assert cli_main(["ingest", str(source), "--out", str(out), "--name", "cli", "--shard-rows", "10"]) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats == {"in": 2, "kept": 1, "dropped": {"invalid_json": 1}}
    assert list((out / "data").glob("*.parquet")) and list((out / "rejects").glob("*.parquet"))
    assert "kept=1" in capsys.readouterr().out
    assert cli_main(["ingest", str(source), "--out", str(out)]) == 2  # refuses to mix with old output
    assert cli_main(["ingest", str(source), "--out", str(out), "--overwrite", "--limit", "1"]) == 0
    assert json.loads((out / "stats.json").read_text())["in"] == 1


def test_cli_errors_name_the_path(tmp_path, capsys):
    assert cli_main(["ingest", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o")]) == 2
    assert "missing.jsonl" in capsys.readouterr().err
    assert cli_main(["ingest", "x.jsonl", "--out", str(tmp_path / "o"), "--field", "bogus=q"]) == 2
    assert "unknown field_map keys" in capsys.readouterr().err


def test_cli_field_mapping_and_format(tmp_path):
    p = tmp_path / "qa.jsonl"
    p.write_text(json.dumps({"question": "2+2?", "answer": "4", "stars": 5}) + "\n")
    out = tmp_path / "out"
    assert cli_main(["ingest", str(p), "--out", str(out), "--format", "prompt_completion", "--field",
                     "prompt=question", "--field", "completion=answer", "--annotation", "ratings=stars"]) == 0
    import pyarrow.parquet as pq
    row = pq.read_table(out / "data").to_pylist()[0]
    assert row["messages"][1]["content"] == "4" and row["annotations"][0]["rating"] == 5.0
