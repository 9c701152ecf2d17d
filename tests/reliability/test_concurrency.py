"""Two ``peftpipe run`` processes at once, different configs, one workdir, one MLflow database, one Prefect
server: both finish, each trains its own adapter on the shared curated data, neither sees the other's run."""
from __future__ import annotations

import pytest
import yaml
from mlflow import MlflowClient

from tasks.track.runs import content_digest
from tests.reliability.harness import assert_nothing_partial_looks_complete, complete_stage_dirs

pytestmark = pytest.mark.slow  # real CLI runs: minutes on 2 cores


def test_both_runs_succeed(concurrent_pair):
    assert concurrent_pair.rc == (0, 0), (concurrent_pair.a.tail(), concurrent_pair.b.tail())


def test_shared_stages_computed_once_and_complete(concurrent_pair):
    workdir = concurrent_pair.a.workdir
    assert_nothing_partial_looks_complete(workdir)
    for stage in ("ingest", "exact_dedup", "near_dedup", "filter", "split", "tokenize"):
        outputs = [p for p in (workdir / "stages" / stage).iterdir()]
        assert len(outputs) == 1, (stage, outputs)  # one complete output, no leftover of the other run
    assert not list(workdir.rglob(".*.tmp-*"))


def test_each_run_trains_and_logs_its_own_config(concurrent_pair):
    workdir = concurrent_pair.a.workdir
    adapters = {yaml.safe_load((d / "config.yaml").read_text())["name"]: d for d in workdir.glob("adapters/*")}
    assert set(adapters) == {"sample", "sample-lr"}
    for name, lr, r in (("sample", 0.003, 8), ("sample-lr", 0.001, 4)):
        d = adapters[name]
        assert (d / "_SUCCESS").is_file() and not list(d.glob("checkpoints/step-*"))
        saved = yaml.safe_load((d / "config.yaml").read_text())
        assert (saved["train"]["lr"], saved["adapter"]["r"]) == (lr, r)

    client = MlflowClient(tracking_uri=concurrent_pair.a.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("peftpipe").experiment_id])
    by_config = {r.data.tags["peftpipe.config"]: r for r in runs}
    assert len(runs) == 2 and set(by_config) == {"sample", "sample-lr"}
    split = complete_stage_dirs(workdir)["split"]
    train_digest = content_digest(split / "data" / "train" if (split / "data").is_dir() else split / "train")
    for name, lr in (("sample", "0.003"), ("sample-lr", "0.001")):
        run = by_config[name]
        assert run.info.status == "FINISHED"
        assert run.data.params["train.lr"] == lr
        assert run.data.metrics["final.steps"] == 6
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
        assert sorted(steps) == [1, 2, 3, 4, 5, 6]  # each run's curve is its own, not interleaved
        inputs = {i.tags[0].value: i.dataset.digest for i in run.inputs.dataset_inputs if i.tags}
        assert inputs["training"] == train_digest
    pids = {r.data.tags["peftpipe.pid"] for r in runs}
    assert pids == {str(concurrent_pair.a.proc.pid), str(concurrent_pair.b.proc.pid)}
