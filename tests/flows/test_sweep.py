"""End to end: a 2-variant sweep on the bundled sample (3 steps each), under Prefect's test harness.

One variant changes curation (near-dedup threshold 0.6), one only training (rank 4) and so shares the reference
curation. Checks what the sweep promises: curation once per distinct setting, one base model, one eval set for
all, child runs of one parent MLflow run, and the comparison in Prefect and MLflow.
"""
import json
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from tasks.core.stage import read_ledger, read_table

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def swept(tmp_path_factory, prefect_harness):
    from flows.sweep import sweep_flow
    from schemas.sweep import load_sweep

    tmp = tmp_path_factory.mktemp("sweep")
    path = tmp / "sweep.yaml"
    path.write_text(yaml.safe_dump({
        "name": "t", "base": str(ROOT / "configs/sample.yaml"),
        "overrides": {"workdir": str(tmp / "work"), "tracking.tracking_uri": f"sqlite:///{tmp / 'mlruns.db'}",
                      "ingest.sources.0.path": str(ROOT / "data/sample.jsonl"), "ingest.sources.0.limit": 300,
                      "train.max_steps": 3, "train.warmup_steps": 0, "train.eval_every": 3},
        "variants": [{"dedup.threshold": 0.6}, {"adapter.r": 4, "adapter.alpha": 8}], "samples": 1,
    }, sort_keys=False))
    sweep = load_sweep(path)
    return sweep, sweep_flow(sweep), tmp


def runs_by_role(tmp, parent_id):
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp / 'mlruns.db'}")
    parent = client.get_run(parent_id)
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")
    by_role: dict[str, list] = {}
    for run in children:
        by_role.setdefault(run.data.tags["peftpipe.sweep.role"], []).append(run)
    return client, parent, by_role


def test_every_variant_is_measured_on_one_eval_set_with_one_base(swept):
    _, result, tmp = swept
    assert not result.failed
    rows = {r["variant"]: r for r in result.rows}
    assert set(rows) == {"threshold=0.6", "r=4 alpha=8"}
    losses = [r["eval_loss"] for r in rows.values()]
    assert all(loss == loss for loss in losses)  # finite: both trained and evaluated
    base_losses = {round(r["base_eval_loss"], 6) for r in rows.values()}
    assert len(base_losses) == 1  # the same base model on the same eval tokens
    # Each variant reports its own curation's count: a lower dedup threshold never keeps more.
    assert rows["threshold=0.6"]["curation"] != rows["r=4 alpha=8"]["curation"]
    assert rows["threshold=0.6"]["records_kept"] <= rows["r=4 alpha=8"]["records_kept"]
    assert len(list((tmp / "work/models").iterdir())) == 1  # one tiny base model + tokenizer for the sweep

    stages = [p for p in (tmp / "work/stages/shared_eval_split").iterdir() if (p / "_SUCCESS").exists()]
    assert len(stages) == 2
    eval_ids = [sorted(read_table(p / "eval")["id"].to_pylist()) for p in stages]
    assert eval_ids[0] == eval_ids[1] and eval_ids[0]
    for p in stages:
        read_ledger(p).check()
        train_ids = set(read_table(p / "train")["id"].to_pylist())
        assert not train_ids & set(eval_ids[0])


def test_curation_runs_once_per_distinct_setting(swept):
    _, result, tmp = swept
    splits = [p for p in (tmp / "work/stages/split").iterdir() if (p / "_SUCCESS").exists()]
    assert len(splits) == 2  # base curation (shared by r=4) + threshold 0.6
    _, _, by_role = runs_by_role(tmp, result.parent_run_id)
    assert len(by_role["curation"]) == 2 and len(by_role["variant"]) == 2


def test_variants_are_child_runs_with_params_metrics_and_samples(swept):
    _, result, tmp = swept
    client, parent, by_role = runs_by_role(tmp, result.parent_run_id)
    for run in by_role["variant"]:
        assert run.info.status == "FINISHED"
        m, p = run.data.metrics, run.data.params
        assert {"eval_loss", "perplexity", "base_eval_loss", "records_kept", "train_records"} <= set(m)
        row = next(r for r in result.rows if r["run_id"] == run.info.run_id)
        assert m["eval_loss"] == pytest.approx(row["eval_loss"]) and m["records_kept"] == row["records_kept"]
        variant = run.data.tags["peftpipe.variant"]
        assert p["dedup.threshold"] == ("0.6" if variant == "threshold=0.6" else "0.8")
        assert p["adapter.r"] == ("4" if variant.startswith("r=4") else "8")
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"samples.json", "adapter"} <= artifacts
    assert parent.data.tags["peftpipe.best_variant"] == result.rows[0]["variant"]
    assert parent.data.metrics["best_eval_loss"] == pytest.approx(result.rows[0]["eval_loss"])
    sweep_files = {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")}
    assert {"sweep/comparison.json", "sweep/eval_loss_vs_records.png", "sweep/comparison.md"} <= sweep_files
    table = json.loads(Path(client.download_artifacts(parent.info.run_id, "sweep/comparison.json", str(tmp)))
                       .read_text())  # mlflow.log_table's format: {"columns": [...], "data": [[...], ...]}
    variants = [row[table["columns"].index("variant")] for row in table["data"]]
    assert sorted(variants) == sorted(r["variant"] for r in result.rows)
    assert "Best: **" in parent.data.tags["mlflow.note.content"]


def test_comparison_is_published_as_prefect_artifacts(swept):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    _, result, _ = swept
    assert (result.out_dir / "comparison.md").read_text().count("| ") > 4
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["t-comparison", "t-summary", "t-plot", "t-generations"])))
    kinds = {a.key: a.type for a in found}
    assert kinds == {"t-comparison": "table", "t-summary": "markdown", "t-plot": "image", "t-generations": "table"}
