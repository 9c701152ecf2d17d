"""End to end: `pipeline` with configs/dpo-sample.yaml: annotations -> pairs -> a registered DPO adapter that
prefers the held-out chosen responses more than its base does, all tracked in MLflow."""
import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from schemas.pipeline import load_config
from tasks.core.stage import read_ledger, read_table

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "data/preference_sample.jsonl"


@pytest.fixture(scope="module")
def run(tmp_path_factory, prefect_harness):
    tmp = tmp_path_factory.mktemp("dpo-e2e")
    cfg = load_config(ROOT / "configs/dpo-sample.yaml", [
        f"workdir={tmp / 'work'}", f"tracking.tracking_uri=sqlite:///{tmp / 'mlruns.db'}",
        f"ingest.sources.0.path={SAMPLE}", "train.max_steps=16", "train.eval_every=8", "train.save_every=8"])
    from flows.pipeline import pipeline_flow
    result = pipeline_flow(cfg)
    stages = {p.parent.name: p for p in Path(cfg.workdir, "stages").glob("*/*") if (p / "_SUCCESS").exists()}
    return cfg, result, stages


def test_ledgers_chain_and_planted_groups_get_their_reasons(run):
    _, _, stages = run
    order = ["ingest", "exact_dedup", "near_dedup", "filter", "preference"]
    ledgers = [read_ledger(stages[name]) for name in order]
    for up, down in zip(ledgers, ledgers[1:]):
        down.check()
        assert down.n_in == up.kept, (up.stage, down.stage)
    assert ledgers[0].n_in == sum(1 for _ in open(SAMPLE, "rb"))
    pref = ledgers[-1]
    rejects = read_table(stages["preference"] / "rejects")
    planted = {json.loads(m)["planted"]: r for m, r in zip(rejects["meta"].to_pylist(),
                                                           rejects["reject_reason"].to_pylist())}
    assert planted == {"tie": "tie", "low_margin": "low_margin", "disagree": "annotators_disagree",
                       "single": "single_response"}
    assert pref.extra["candidate_pairs"]["dropped"]["over_max_pairs"] > 0  # the 'many' groups hit k
    tok = read_ledger(stages["preference-tokenize"])
    assert tok.n_in == pref.extra["train_pairs"] + pref.extra["eval_pairs"]


def test_adapter_beats_the_base_on_held_out_pairs(run):
    _, result, _ = run
    m = result.metrics
    assert m["pref_pairs"] >= 30
    assert m["pref_reward_accuracy"] > 0.8 and m["pref_mean_margin"] > 0  # the base scores 0 on both
    assert m["pref_adapter_prefers_chosen_per_token"] > m["pref_base_prefers_chosen_per_token"]
    assert m["pref_adapter_prefers_chosen"] >= m["pref_base_prefers_chosen"]


def test_mlflow_run_holds_pairs_curves_and_the_registered_adapter(run):
    cfg, result, _ = run
    client = MlflowClient(tracking_uri=cfg.tracking.tracking_uri)
    r = client.get_run(result.run_id)
    assert r.info.status == "FINISHED" and r.data.params["train.objective"] == "dpo"
    assert r.data.metrics["preference.prompts.dropped.tie"] == 20
    pairs = r.data.metrics["preference.train_pairs"] + r.data.metrics["preference.eval_pairs"]
    assert r.data.metrics["preference.candidate_pairs.kept"] == pairs
    contexts = {i.tags[0].value: i.dataset for i in r.inputs.dataset_inputs if i.tags}
    assert {"training", "evaluation"} <= set(contexts)
    assert contexts["training"].name.endswith("preference-train") and len(contexts["training"].digest) == 32
    for key in ("train_loss", "rewards/accuracies", "rewards/margins", "eval_loss"):
        assert client.get_metric_history(result.run_id, key), key
    assert r.data.metrics["final.pref_reward_accuracy"] == result.metrics["pref_reward_accuracy"]
    version = client.get_model_version_by_alias(cfg.name, "candidate")
    assert version.run_id == result.run_id
    assert "adapter/adapter_model.safetensors" in {a.path for a in client.list_artifacts(result.run_id, "adapter")}
