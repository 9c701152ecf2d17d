"""kill -9 at every stage of a real ``peftpipe run``, then rerun, until one run finishes; and a sweep killed
between its two variants.

Each attempt is started with ``PEFTPIPE_TEST_PAUSE`` naming one pause point (``tasks.core.pause``): the stage
stops right after it has written some of its data, writes a note, and waits. The test waits for the note (an
event, not a delay), records what the stage left on disk, and SIGKILLs the whole process group. So every kill
lands inside its stage on an idle machine and on a loaded one alike. One workdir goes through the chain:
ingest, exact and near dedup, the filters, the split, the base model, tokenization, training (after a seeded
choice of checkpoint), evaluation and MLflow logging. After every kill nothing partial may look complete; at
the end the curated split must be byte-identical to an uninterrupted run (the concurrency test's config-A
run), training must have resumed from its last checkpoint, and every killed attempt's MLflow run must be FAILED.
"""
from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from mlflow import MlflowClient
from safetensors.torch import load_file

from tests.reliability.harness import (
    ROOT,
    assert_nothing_partial_looks_complete,
    cli_env,
    complete_stage_dirs,
    file_digests,
    stage_fingerprint,
    start_run,
    wait_for_pause,
)

# Real CLI runs: eleven in the chain, two in the sweep, each a minute or more on 2 busy cores; the module
# fixtures run inside the first test's time budget. A hang still fails: every run has its own RUN_TIMEOUT.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]
SEED = 20261128
CURATION = ("ingest", "exact_dedup", "near_dedup", "filter", "split")
MARKERS = ("_SUCCESS", "stats.json")


@dataclass(frozen=True)
class KillPoint:
    point: str    # a pause point of the pipeline: "stage.<name>", "prepare-base-model", "train.checkpoint", ...
    nth: int = 1  # the n-th time the run reaches it (train.checkpoint: which checkpoint)

    @property
    def env(self) -> str:
        return self.point if self.nth == 1 else f"{self.point}#{self.nth}"


def kill_plan(rng: random.Random) -> list[KillPoint]:
    """One kill per stage, in pipeline order (each attempt reuses what the killed ones finished); the seed picks
    which checkpoint training is killed after, so a failure reproduces."""
    return [*(KillPoint(f"stage.{s}") for s in CURATION), KillPoint("prepare-base-model"),
            KillPoint("stage.tokenize"), KillPoint("train.checkpoint", rng.choice([1, 2])), KillPoint("evaluate"),
            KillPoint("log-model")]


def checkpoints(workdir: Path) -> list[Path]:
    return sorted(p for p in workdir.glob("adapters/*/checkpoints/step-*") if (p / "meta.json").is_file())


def data_files(directory: Path) -> dict[str, int]:
    """Non-empty files a stage wrote into its temporary directory, markers aside: its data so far."""
    return {str(p.relative_to(directory)): p.stat().st_size for p in sorted(directory.rglob("*"))
            if p.is_file() and p.name not in MARKERS and p.stat().st_size > 0}


def landing(point: KillPoint, note: dict, workdir: Path, uri: str) -> dict:
    """What the killed attempt left of the stage it was killed in: its data started, nothing published."""
    if point.point.startswith("stage."):
        stage = point.point.split(".", 1)[1]
        tmp = Path(note["tmp"])
        return {"in_stage_dir": tmp.parent == workdir / "stages" / stage, "data": data_files(tmp),
                "marked_complete": any((tmp / m).exists() for m in MARKERS),
                "published": stage in complete_stage_dirs(workdir)}
    if point.point == "prepare-base-model":
        tmp = Path(note["tmp"])
        return {"in_stage_dir": tmp.parent == workdir / "models", "data": data_files(tmp),
                "marked_complete": (tmp / "model.safetensors").exists(),
                "published": any(p.is_dir() and not p.name.startswith(".") for p in (workdir / "models").iterdir())}
    if point.point == "train.checkpoint":
        return {"checkpoints": [p.name for p in checkpoints(workdir)],
                "published": any(workdir.glob("adapters/*/_SUCCESS"))}
    if point.point == "evaluate":
        tmp = Path(note["tmp"])
        return {"data": {tmp.name: tmp.stat().st_size} if tmp.is_file() else {},
                "published": any(workdir.glob("adapters/*/evaluation-*.json"))}
    client = MlflowClient(tracking_uri=uri)  # log-model: the adapter is in the run's artifacts, not registered
    run_id = note["run_id"]
    return {"data": {a.path: a.file_size for a in client.list_artifacts(run_id, "adapter") if a.file_size},
            "published": bool(client.search_model_versions(f"run_id = '{run_id}'"))}


@pytest.fixture(scope="module")
def chain(tmp_path_factory, prefect_api):
    """Run the kill plan in one workdir, then one uninterrupted rerun; record what each kill left."""
    tmp = tmp_path_factory.mktemp("kills")
    workdir, uri = tmp / "work", f"sqlite:///{tmp / 'mlruns.db'}"
    attempts = []
    for i, point in enumerate(kill_plan(random.Random(SEED))):
        note_path = tmp / f"pause-{i}.json"
        env = cli_env(tmp, PREFECT_API_URL=prefect_api, PEFTPIPE_TEST_PAUSE=point.env,
                      PEFTPIPE_TEST_PAUSE_FILE=str(note_path))
        run = start_run(tmp, workdir, uri, env=env, log_name=f"attempt-{i}-{point.point}.log")
        note = wait_for_pause(run, note_path)
        run.kill()
        attempts.append({"point": point, "pid": run.proc.pid, "note": note,
                         "landing": landing(point, note, workdir, uri),
                         "checkpoints": [p.name for p in checkpoints(workdir)]})
        assert_nothing_partial_looks_complete(workdir)
    final = start_run(tmp, workdir, uri, env=cli_env(tmp, PREFECT_API_URL=prefect_api), log_name="final.log")
    assert final.wait() == 0, final.tail()
    return {"workdir": workdir, "uri": uri, "attempts": attempts, "final": final}


def test_the_plan_kills_every_stage():
    points = {p.point for p in kill_plan(random.Random(SEED))}
    assert points == {"stage.ingest", "stage.exact_dedup", "stage.near_dedup", "stage.filter", "stage.split",
                      "prepare-base-model", "stage.tokenize", "train.checkpoint", "evaluate", "log-model"}


def test_each_kill_landed_inside_its_stage_after_writing_data(chain):
    for a in chain["attempts"]:
        point, note, landed = a["point"], a["note"], a["landing"]
        assert note["point"] == point.point and note["pid"] == a["pid"], a  # the attempt itself, at that point
        assert not landed["published"], a  # killed before the stage's output was complete
        if point.point == "train.checkpoint":
            assert len(landed["checkpoints"]) == point.nth, a  # the n-th checkpoint written, training unfinished
            continue
        assert landed["data"], a  # some of the stage's data was on disk (or in MLflow), not only a directory
        if "in_stage_dir" in landed:
            assert landed["in_stage_dir"] and not landed["marked_complete"], a


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
    train_i = next(i for i, a in enumerate(attempts) if a["point"].point == "train.checkpoint")
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
    final = runs[-1].info.run_id  # the final run registered the adapter; no killed one did
    assert [v.run_id for v in client.search_model_versions("name = 'sample'")] == [final]


def test_no_partial_output_after_the_final_run(chain):
    assert_nothing_partial_looks_complete(chain["workdir"])
    stages = complete_stage_dirs(chain["workdir"])
    order = ["ingest", "exact_dedup", "near_dedup", "filter", "split"]
    ledgers = [json.loads((stages[s] / "stats.json").read_text()) for s in order]
    for up, down in zip(ledgers, ledgers[1:]):
        assert down["in"] == up["kept"]


# --------------------------------------------------------------------------- a sweep killed between variants

SWEEP_GRID = [4, 8]  # adapter.r: two variants on one curation


@pytest.fixture(scope="module")
def sweep_chain(tmp_path_factory, prefect_api):
    """A two-variant sweep killed once the first variant is trained, evaluated and logged; then rerun."""
    tmp = tmp_path_factory.mktemp("sweep-kill")
    workdir, uri = tmp / "work", f"sqlite:///{tmp / 'mlruns.db'}"
    sweep_yaml = tmp / "sweep.yaml"
    sweep_yaml.write_text(yaml.safe_dump({"name": "kill-sweep", "base": str(ROOT / "configs" / "sample.yaml"),
                                          "grid": {"adapter.r": SWEEP_GRID}, "samples": 1}))
    note_path = tmp / "pause.json"
    env = cli_env(tmp, PREFECT_API_URL=prefect_api, PEFTPIPE_TEST_PAUSE="sweep.variant-done#1",
                  PEFTPIPE_TEST_PAUSE_FILE=str(note_path))
    killed = start_run(tmp, workdir, uri, env=env, log_name="killed.log", command="sweep", config=sweep_yaml)
    note = wait_for_pause(killed, note_path)
    try:
        adapters = {p.name: {f.name: f.stat().st_mtime_ns for f in p.iterdir() if f.is_file()}
                    for p in sorted((workdir / "adapters").iterdir())}
        done = [p.parent.name for p in workdir.glob("adapters/*/_SUCCESS")]
        out_dirs = list(workdir.glob("sweeps/*"))
    finally:
        killed.kill()
    assert_nothing_partial_looks_complete(workdir)
    final = start_run(tmp, workdir, uri, env=cli_env(tmp, PREFECT_API_URL=prefect_api), log_name="final.log",
                      command="sweep", config=sweep_yaml)
    assert final.wait() == 0, final.tail()
    return {"workdir": workdir, "uri": uri, "note": note, "pid": killed.proc.pid, "adapters_at_kill": adapters,
            "done_at_kill": done, "out_dirs_at_kill": out_dirs, "final": final}


def test_sweep_kill_landed_between_the_variants(sweep_chain):
    assert sweep_chain["note"]["point"] == "sweep.variant-done" and sweep_chain["note"]["pid"] == sweep_chain["pid"]
    # The first variant's adapter was complete, the second had not started, nothing was compared yet.
    assert len(sweep_chain["done_at_kill"]) == 1 and list(sweep_chain["adapters_at_kill"]) == \
        sweep_chain["done_at_kill"], sweep_chain
    assert sweep_chain["out_dirs_at_kill"] == []


def test_sweep_rerun_reuses_the_first_variant_and_trains_the_second(sweep_chain):
    workdir = sweep_chain["workdir"]
    [first] = sweep_chain["done_at_kill"]
    before = sweep_chain["adapters_at_kill"][first]
    after = {f.name: f.stat().st_mtime_ns for f in (workdir / "adapters" / first).iterdir() if f.is_file()}
    assert after == before  # not trained again: the same files, untouched
    adapters = sorted(p.parent.name for p in workdir.glob("adapters/*/_SUCCESS"))
    assert len(adapters) == 2 and first in adapters
    [out] = workdir.glob("sweeps/*/comparison.json")
    rows = json.loads(out.read_text())
    assert len(rows) == len(SWEEP_GRID) and all(math.isfinite(r["eval_loss"]) and r["steps"] == 6 for r in rows), rows


def test_sweep_killed_parent_run_failed_rerun_finished(sweep_chain):
    client = MlflowClient(tracking_uri=sweep_chain["uri"])
    exp = client.get_experiment_by_name("peftpipe")
    parents = sorted(client.search_runs([exp.experiment_id], "tags.`peftpipe.sweep.role` = 'parent'"),
                     key=lambda r: r.info.start_time)
    assert [r.info.status for r in parents] == ["FAILED", "FINISHED"]
    assert parents[0].data.tags["peftpipe.pid"] == str(sweep_chain["pid"])
    assert "killed" in parents[0].data.tags["peftpipe.failure"]
