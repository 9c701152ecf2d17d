"""kill -9 at seeded random points of a real ``peftpipe run``, then rerun, until one run finishes.

One workdir goes through a chain of attempts: each is SIGKILLed (its whole process group) during the next
planned point: ingest, a dedup stage, the filters, tokenization, training (after a checkpoint) and MLflow
logging. After every kill nothing partial may look complete; at the end the curated split must be byte-identical
to an uninterrupted run (the concurrency test's config-A run), training must have resumed from its last
checkpoint, and every killed attempt's MLflow run must be FAILED.
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from mlflow import MlflowClient
from safetensors.torch import load_file

from tests.reliability.harness import (
    assert_nothing_partial_looks_complete,
    cli_env,
    complete_stage_dirs,
    file_digests,
    stage_fingerprint,
    start_run,
    wait_for,
)

pytestmark = pytest.mark.slow  # real CLI runs: minutes on 2 cores
SEED = 20261128
CURATION = ("ingest", "dedup", "filter", "tokenize")


@dataclass(frozen=True)
class KillPoint:
    where: str          # a stage directory name, "train" or "mlflow"
    delay: float        # seconds to wait after the point is detected
    checkpoints: int = 0  # train: kill once this many checkpoints exist


def kill_plan(rng: random.Random) -> list[KillPoint]:
    """The seeded plan: one kill per phase, in pipeline order; which dedup stage, the delays and the
    checkpoint come from the RNG so the points vary with the seed but a failure reproduces."""
    plan = []
    for phase in CURATION:
        where = rng.choice(["exact_dedup", "near_dedup"]) if phase == "dedup" else phase
        plan.append(KillPoint(where, rng.uniform(0.0, 0.05)))  # stages last a second or less here
    plan.append(KillPoint("train", rng.uniform(0.0, 0.3), checkpoints=rng.choice([1, 2])))
    plan.append(KillPoint("mlflow", rng.uniform(0.0, 0.2)))
    return plan


def stage_tmp(workdir: Path, stage: str) -> list[Path]:
    return [p for p in (workdir / "stages" / stage).glob(".*.tmp-*") if p.is_dir()]


def checkpoints(workdir: Path) -> list[Path]:
    return sorted(p for p in workdir.glob("adapters/*/checkpoints/step-*") if (p / "meta.json").is_file())


def adapter_artifacts(cwd: Path) -> list[Path]:
    return list(cwd.glob("mlruns/*/*/artifacts/adapter"))


def detector(point: KillPoint, workdir: Path, cwd: Path):
    if point.where == "train":
        return lambda: len(checkpoints(workdir)) >= point.checkpoints
    if point.where == "mlflow":
        before = set(adapter_artifacts(cwd))
        return lambda: bool(set(adapter_artifacts(cwd)) - before)
    return lambda: bool(stage_tmp(workdir, point.where))


@pytest.fixture(scope="module")
def chain(tmp_path_factory, prefect_api):
    """Run the kill plan in one workdir, then one uninterrupted rerun; record what each kill left."""
    tmp = tmp_path_factory.mktemp("kills")
    workdir, uri = tmp / "work", f"sqlite:///{tmp / 'mlruns.db'}"
    env = cli_env(tmp, PREFECT_API_URL=prefect_api)
    attempts = []
    for i, point in enumerate(kill_plan(random.Random(SEED))):
        run = start_run(tmp, workdir, uri, env=dict(env), log_name=f"attempt-{i}-{point.where}.log")
        hit = wait_for(detector(point, workdir, run.cwd), run.proc)
        assert hit, f"attempt {i} ended before reaching {point}:\n{run.tail()}"
        time.sleep(point.delay)
        alive = run.proc.poll() is None
        run.kill()
        assert alive, f"attempt {i} finished before the kill at {point}:\n{run.tail()}"
        attempts.append({"point": point, "pid": run.proc.pid,
                         "tmp_left": [str(p) for p in workdir.rglob(f".*.tmp-{run.proc.pid}")],
                         "checkpoints": [p.name for p in checkpoints(workdir)]})
        assert_nothing_partial_looks_complete(workdir)
    final = start_run(tmp, workdir, uri, env=dict(env), log_name="final.log")
    assert final.wait() == 0, final.tail()
    return {"workdir": workdir, "uri": uri, "attempts": attempts, "final": final}


def test_each_kill_landed_inside_its_stage(chain):
    for a in chain["attempts"]:
        point = a["point"]
        if point.where in ("ingest", "exact_dedup", "near_dedup", "filter", "tokenize"):
            # The killed process's temporary output is still there: it died mid-stage, before the rename.
            assert any(f"/stages/{point.where}/" in p for p in a["tmp_left"]), a
        if point.where == "train":
            assert len(a["checkpoints"]) >= point.checkpoints, a


def test_curated_split_is_byte_identical_to_an_uninterrupted_run(chain, concurrent_pair):
    assert concurrent_pair.rc[0] == 0, concurrent_pair.a.tail()
    killed = complete_stage_dirs(chain["workdir"])
    clean = complete_stage_dirs(concurrent_pair.a.workdir)
    for stage in ("ingest", "exact_dedup", "near_dedup", "filter", "split", "tokenize"):
        if stage != "tokenize":  # tokenize's key holds the base model's path, which names the workdir
            assert killed[stage].name == clean[stage].name, stage  # same content key
        # Every data file byte for byte; the ledger too, less its wall-clock timings.
        assert stage_fingerprint(killed[stage]) == stage_fingerprint(clean[stage]), f"{stage} differs"
    split = file_digests(killed["split"])
    assert split == file_digests(clean["split"])  # the curated dataset, stats.json included
    assert any(k.startswith("train/") for k in split) and any(k.startswith("eval/") for k in split)


def test_training_resumed_from_last_checkpoint(chain, concurrent_pair):
    attempts = chain["attempts"]
    train_i = next(i for i, a in enumerate(attempts) if a["point"].where == "train")
    last_ckpt = int(attempts[train_i]["checkpoints"][-1].split("-")[1])
    client = MlflowClient(tracking_uri=chain["uri"])
    # The attempt after the training kill trained the rest: its first logged step follows the checkpoint.
    runs = sorted(client.search_runs([client.get_experiment_by_name("peftpipe").experiment_id]),
                  key=lambda r: r.info.start_time)
    resumed = runs[train_i + 1]
    steps = [m.step for m in client.get_metric_history(resumed.info.run_id, "train_loss")]
    assert steps and min(steps) == last_ckpt + 1 and max(steps) == 6, steps
    assert [m.step for m in client.get_metric_history(runs[train_i].info.run_id, "train_loss")][:1] == [1]
    # Resuming continues the same run exactly: the adapter equals the uninterrupted one's.
    [ours] = chain["workdir"].glob("adapters/*/adapter/adapter_model.safetensors")
    [clean] = [p for p in concurrent_pair.a.workdir.glob("adapters/*/adapter/adapter_model.safetensors")
               if yaml.safe_load((p.parents[1] / "config.yaml").read_text())["name"] == "sample"]
    a, b = load_file(ours), load_file(clean)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)


def test_killed_attempts_runs_are_failed_and_final_finished(chain):
    client = MlflowClient(tracking_uri=chain["uri"])
    runs = sorted(client.search_runs([client.get_experiment_by_name("peftpipe").experiment_id]),
                  key=lambda r: r.info.start_time)
    assert len(runs) == len(chain["attempts"]) + 1
    assert [r.info.status for r in runs] == ["FAILED"] * len(chain["attempts"]) + ["FINISHED"]
    for run, attempt in zip(runs, chain["attempts"]):
        assert run.data.tags["peftpipe.pid"] == str(attempt["pid"])
        assert "killed" in run.data.tags["peftpipe.failure"]


def test_no_partial_output_after_the_final_run(chain):
    assert_nothing_partial_looks_complete(chain["workdir"])
    stages = complete_stage_dirs(chain["workdir"])
    order = ["ingest", "exact_dedup", "near_dedup", "filter", "split"]
    ledgers = [json.loads((stages[s] / "stats.json").read_text()) for s in order]
    for up, down in zip(ledgers, ledgers[1:]):
        assert down["in"] == up["kept"]
