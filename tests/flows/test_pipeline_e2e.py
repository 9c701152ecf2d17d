"""End to end: the `pipeline` flow on the bundled sample, under Prefect's test harness, MLflow in a tmp dir."""
import json
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from schemas.pipeline import load_config
from tasks.core.stage import read_ledger, read_table

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_LINES = sum(1 for _ in open(ROOT / "data/sample.jsonl", "rb"))


@pytest.fixture(scope="module")
def run(tmp_path_factory, prefect_harness):
    tmp = tmp_path_factory.mktemp("e2e")
    cfg = load_config(ROOT / "configs/sample.yaml", [
        f"workdir={tmp / 'work'}", f"tracking.tracking_uri=sqlite:///{tmp / 'mlruns.db'}",
        f"ingest.sources.0.path={ROOT / 'data/sample.jsonl'}", "train.max_steps=12", "train.eval_every=6",
        "train.save_every=6"])
    from flows.pipeline import pipeline_flow
    result = pipeline_flow(cfg)
    stages = {p.parent.name: p for p in Path(cfg.workdir, "stages").glob("*/*") if (p / "_SUCCESS").exists()}
    return cfg, result, stages


def meta_of(table):
    return [json.loads(m) for m in table["meta"].to_pylist()]


def source_ids(directory):
    t = read_table(directory)
    return {m["source_id"]: rid for m, rid in zip(meta_of(t), t["id"].to_pylist())}


def test_ledgers_balance_and_chain(run):
    _, _, stages = run
    order = ["ingest", "exact_dedup", "near_dedup", "filter", "split", "tokenize"]
    ledgers = [read_ledger(stages[name]) for name in order]
    for led in ledgers:
        led.check()
    assert ledgers[0].n_in == SAMPLE_LINES  # every line read is counted
    for up, down in zip(ledgers, ledgers[1:]):
        assert down.n_in == up.kept, (up.stage, down.stage)
    assert sum(ledgers[0].dropped.values()) >= 10  # the malformed rows were quarantined, not lost
    assert all(ledgers[i].dropped for i in (1, 2, 3))  # every curation stage had real work


def test_planted_duplicates_removed_with_reasons(run):
    _, _, stages = run
    for stage, planted, reason in (("exact_dedup", "exact_dup", "exact_duplicate"),
                                   ("near_dedup", "near_dup", "near_duplicate")):
        kept = source_ids(stages[stage] / "data")
        rejects = read_table(stages[stage] / "rejects")
        rejected = {m["source_id"]: r for m, r in zip(meta_of(rejects), rejects["reject_reason"].to_pylist())}
        pairs = [(m["source_id"], m["of"]) for m in meta_of(read_table(stages["ingest"] / "data"))
                 if m.get("planted") == planted]
        assert pairs
        for copy, original in pairs:
            if copy in rejected or original in rejected:
                assert copy not in kept or original not in kept
                assert reason in (rejected.get(copy), rejected.get(original))
        found = sum(1 for c, o in pairs if c in rejected or o in rejected)
        assert found >= 0.95 * len(pairs), f"{stage}: only {found}/{len(pairs)} planted pairs caught"


def test_planted_annotation_problems_filtered(run):
    _, _, stages = run
    rejects = read_table(stages["filter"] / "rejects")
    reason_of = {m["source_id"]: r for m, r in zip(meta_of(rejects), rejects["reject_reason"].to_pylist())}
    entered = {m["source_id"]: m["planted"] for m in meta_of(read_table(stages["near_dedup"] / "data"))}
    final = set(source_ids(stages["split"] / "train")) | set(source_ids(stages["split"] / "eval"))
    for sid, planted in entered.items():
        if planted == "flagged":
            assert reason_of[sid].startswith("flagged"), (sid, reason_of.get(sid))
        if planted in ("flagged", "low_rating", "low_agreement", "few_annotators"):
            assert sid not in final and sid in reason_of, (sid, planted)
    clean = [sid for sid, p in entered.items() if p == "clean"]
    assert sum(sid in final for sid in clean) >= 0.95 * len(clean)


def test_adapter_loads_and_changes_output(run):
    _, result, _ = run
    adapter = Path(result.adapter_dir)
    assert (adapter / "adapter_model.safetensors").is_file()
    base_path = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    tok = AutoTokenizer.from_pretrained(base_path)
    ids = tok("Convert 3 kilometers to meters.", return_tensors="pt").input_ids
    base = AutoModelForCausalLM.from_pretrained(base_path)
    with torch.no_grad():
        before = base(ids).logits
        tuned = PeftModel.from_pretrained(base, adapter)
        after = tuned(ids).logits
    assert (after - before).abs().max() > 1e-3


def test_mlflow_run_holds_config_ledgers_curves_dataset_and_adapter(run):
    cfg, result, _ = run
    client = MlflowClient(tracking_uri=cfg.tracking.tracking_uri)
    r = client.get_run(result.run_id)
    assert r.info.status == "FINISHED"
    assert r.data.params["dedup.threshold"] == str(cfg.dedup.threshold)
    assert r.data.params["adapter.method"] == "lora"
    assert r.data.metrics["ingest.in"] == SAMPLE_LINES
    assert r.data.metrics["near_dedup.dropped.near_duplicate"] > 0
    train_curve = client.get_metric_history(result.run_id, "train_loss")
    assert len(train_curve) >= 10 and len(client.get_metric_history(result.run_id, "eval_loss")) >= 2
    contexts = {i.tags[0].value: i.dataset for i in r.inputs.dataset_inputs if i.tags}
    assert {"training", "evaluation", "tokenized"} <= set(contexts)
    assert len(contexts["training"].digest) >= 16
    artifacts = {a.path for a in client.list_artifacts(result.run_id, "adapter")}
    assert "adapter/adapter_model.safetensors" in artifacts


def test_prefect_artifacts_show_ledger_reports_progress_and_mlflow_link(run):
    import asyncio

    from prefect.client.orchestration import get_client

    async def artifacts():
        async with get_client() as client:
            return [a for a in await client.read_artifacts() if a.key]

    # The harness's server is shared by the session's other flows: find this run's link among every run's.
    found: dict[str, list] = {}
    for a in asyncio.run(artifacts()):
        found.setdefault(a.key, []).append(a)
    assert {"curation-ledger", "ingest-lineage", "filter-report", "training-progress", "mlflow-run"} <= set(found)
    assert any(float(a.data) == 100.0 for a in found["training-progress"])
    assert any(run[1].run_id in a.data for a in found["mlflow-run"]), [a.data for a in found["mlflow-run"]]
