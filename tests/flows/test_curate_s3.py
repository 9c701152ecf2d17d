"""The curate flow with ``workdir: s3://...`` against a real S3-compatible server (moto's server mode, over
HTTP, authentication on): the same stage outputs, byte for byte, as a local workdir; a rerun from a machine
with an empty scratch is a cache hit read from the store; a missing bucket or refused credentials stop the
run in preflight, before any stage."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from schemas.pipeline import load_config
from tasks.core import storage
from tests.reliability.harness import _drop_timings
from tests.tasks.core.s3server import clear_clients, s3_server

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "peftpipe-curate"
ROWS = 700  # of the bundled sample: planted duplicates and malformed rows included, a few seconds per run


@pytest.fixture(autouse=True)
def scratch_env(monkeypatch, tmp_path):
    """storage.configure exports storage.scratch_dir as PEFTPIPE_SCRATCH: undone after each test."""
    monkeypatch.setenv(storage.SCRATCH_ENV, str(tmp_path / "scratch"))


@pytest.fixture(scope="module")
def s3():
    with s3_server((BUCKET,)) as server:
        yield server


@pytest.fixture(scope="module")
def source(tmp_path_factory, s3):
    """The same JSONL file on local disk and in the bucket."""
    path = tmp_path_factory.mktemp("src") / "sample.jsonl"
    with open(ROOT / "data/sample.jsonl", "rb") as f:
        path.write_bytes(b"".join(line for _, line in zip(range(ROWS), f)))
    s3.client().put_object(Bucket=BUCKET, Key="sources/sample.jsonl", Body=path.read_bytes())
    return path, f"s3://{BUCKET}/sources/sample.jsonl"


def curate(tmp: Path, workdir: str, source: str, scratch: str = "scratch"):
    from flows.curate import curate_flow

    cfg = load_config(ROOT / "configs/sample.yaml", [
        f"workdir={workdir}", f"ingest.sources.0.path={source}", f"storage.scratch_dir={tmp / scratch}",
        f"tracking.tracking_uri=sqlite:///{tmp / 'mlruns.db'}"])
    return cfg, curate_flow(cfg)


def remote_files(s3, prefix: str) -> dict[str, bytes]:
    """Every object under ``prefix``, read with boto3 (not through the code under test)."""
    client, out = s3.client(), {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/"):
        for obj in page.get("Contents", []):
            out[obj["Key"][len(prefix) + 1:]] = client.get_object(Bucket=BUCKET, Key=obj["Key"])["Body"].read()
    return out


def local_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def comparable(files: dict[str, bytes]) -> dict[str, bytes]:
    """Every file's bytes; stats.json less its wall-clock timings, as the kill tests compare it."""
    stats = json.loads(files["stats.json"])
    return {**files, "stats.json": json.dumps(_drop_timings(stats), sort_keys=True).encode()}


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, source, prefect_harness):
    tmp = tmp_path_factory.mktemp("local")
    cfg, result = curate(tmp, str(tmp / "work"), str(source[0]))
    return result, {s.name: local_files(Path(s.url)) for s in result.stages}


def test_s3_workdir_gives_the_local_bytes_and_a_rerun_is_a_cache_hit(tmp_path, s3, source, local_run):
    local, local_stages = local_run
    workdir = f"s3://{BUCKET}/runs/a"
    _, result = curate(tmp_path, workdir, str(source[0]))
    assert [s.key for s in result.stages] == [s.key for s in local.stages]
    for stage in result.stages:
        assert stage.url == f"{workdir}/stages/{stage.name}/{stage.key}"
        stored = remote_files(s3, f"runs/a/stages/{stage.name}/{stage.key}")
        # Parquet shards, ledger, reports, marker
        assert comparable(stored) == comparable(local_stages[stage.name]), stage.name
        assert "_SUCCESS" in stored and "stats.json" in stored
    assert result.split.ledger.to_dict() == local.split.ledger.to_dict()  # read through the store
    # MLflow's dataset inputs name where the curated sets live at rest: the bucket, not this machine's mirror
    from mlflow import MlflowClient
    run = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}").search_runs(
        [MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}").get_experiment_by_name("peftpipe").experiment_id])[0]
    sources = {d.dataset.name: json.loads(d.dataset.source)["uri"] for d in run.inputs.dataset_inputs
               if d.dataset.name.startswith("sample-")}
    assert sources == {"sample-train": f"{result.split.url}/train", "sample-eval": f"{result.split.url}/eval"}

    # Another machine (an empty scratch) runs the same config: every stage is found complete in the bucket,
    # no stage body runs (a body writes into SCRATCH/stages first), and nothing in the bucket is rewritten.
    before = {o["Key"]: o["LastModified"] for o in s3.client().list_objects_v2(Bucket=BUCKET, Prefix="runs/a/")
              ["Contents"]}
    _, again = curate(tmp_path, workdir, str(source[0]), scratch="scratch-2")
    assert [s.key for s in again.stages] == [s.key for s in result.stages]
    assert not (tmp_path / "scratch-2" / "stages").exists()
    after = {o["Key"]: o["LastModified"] for o in s3.client().list_objects_v2(Bucket=BUCKET, Prefix="runs/a/")
             ["Contents"]}
    assert after == before
    # ... and what it read, it read from the bucket: its mirror of the split holds the stored bytes
    assert local_files(again.split.path) == {**local_stages["split"], storage.MIRRORED: again.split.path.joinpath(
        storage.MIRRORED).read_bytes()}


def test_a_source_on_s3_gives_the_same_records(tmp_path, s3, source, local_run):
    local, local_stages = local_run
    local_path, url = source
    _, result = curate(tmp_path, f"s3://{BUCKET}/runs/b", url)
    assert result.stages[0].ledger.extra["sources"][0]["path"] == url  # read from the bucket, not the disk
    for stage in result.stages:
        stored = comparable(remote_files(s3, f"runs/b/stages/{stage.name}/{stage.key}"))
        want = comparable(local_stages[stage.name])
        assert stored.keys() == want.keys(), stage.name
        for name, data in stored.items():
            if stage.name == "ingest" and name.startswith("rejects/"):
                # a quarantined row's location names its file: the URL here, the path there
                assert relocated(pq.read_table(pa.BufferReader(data)), url, local_path) == \
                    pq.read_table(pa.BufferReader(want[name])).to_pylist(), name
            elif stage.name == "ingest" and name == "stats.json":  # the lineage names the source, the same way
                assert data.replace(url.encode(), str(local_path).encode()) == want[name]
            else:
                assert data == want[name], (stage.name, name)


def relocated(table: pa.Table, url: str, local_path: Path) -> list[dict]:
    return [{k: v.replace(url, str(local_path)) if isinstance(v, str) else v for k, v in row.items()}
            for row in table.to_pylist()]


@pytest.mark.parametrize("problem", ["missing bucket", "wrong secret"])
def test_preflight_stops_before_any_stage(tmp_path, s3, source, problem, monkeypatch, capsys):
    from flows.cli import main

    workdir = f"s3://{BUCKET}/runs/c"
    if problem == "missing bucket":
        workdir = "s3://no-such-bucket-here/runs/c"
    else:
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-" + s3.secret)
        clear_clients()
    try:
        code = main(["curate", "--config", str(ROOT / "configs/sample.yaml"), "--set", f"workdir={workdir}",
                     "--set", f"ingest.sources.0.path={source[0]}", "--set",
                     f"storage.scratch_dir={tmp_path / 'scratch'}", "--set",
                     f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlruns.db'}"])
    finally:
        clear_clients()
    err = capsys.readouterr().err
    assert code == 3, err
    want = "bucket 'no-such-bucket-here' does not exist" if problem == "missing bucket" else \
        "access denied: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
    assert f"workdir {workdir} cannot be written ({want}" in err
    assert s3.secret not in err and "not-" + s3.secret not in err
    assert not (tmp_path / "scratch" / "stages").exists()
    assert "Contents" not in s3.client().list_objects_v2(Bucket=BUCKET, Prefix="runs/c/")


def test_tokenize_goes_to_the_store_and_training_reads_it(tmp_path, s3, source, local_run):
    """The train flow on the same s3:// workdir: curation is found in the bucket, the tokenize stage is
    uploaded with the bytes a local run makes, and the adapter, trained on the mirror of those rows, is local."""
    from flows.train import train_flow
    from tasks.tokenize.stage import tokenize_task
    from tasks.train.model import prepare_base_model

    local, _ = local_run
    cfg = load_config(ROOT / "configs/sample.yaml", [
        f"workdir=s3://{BUCKET}/runs/a", f"ingest.sources.0.path={source[0]}",
        f"storage.scratch_dir={tmp_path / 'scratch'}", f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlruns.db'}",
        "train.max_steps=2", "train.warmup_steps=0", "train.eval_every=2", "train.save_every=2", "evaluate.max_items=2",
        "evaluate.max_new_tokens=4", "evaluate.task_metrics=false"])
    result = train_flow(cfg)
    assert Path(result.adapter_dir).is_relative_to(tmp_path / "scratch")  # weights stay on local disk
    assert (Path(result.adapter_dir) / "adapter_model.safetensors").is_file()
    assert not Path("s3:").exists()  # nothing took the URL for a local path

    stored = {k.split("/")[0] for k in remote_files(s3, "runs/a/stages/tokenize") if k.endswith("/_SUCCESS")}
    assert len(stored) == 1
    key = next(iter(stored))
    # the same stage in a local workdir, from the local curation: same key, same bytes
    work = Path(local.split.url).parents[2]
    base = prepare_base_model(cfg.model, work, local.split.data("train"))
    here = tokenize_task.fn(local.split, base, cfg.model_copy(update={"workdir": str(work)}))
    assert here.key == key
    assert comparable(remote_files(s3, f"runs/a/stages/tokenize/{key}")) == comparable(local_files(Path(here.url)))


def test_eval_set_and_decontamination_source_on_s3(tmp_path, s3):
    from schemas.evaluate import EvalSetConfig
    from tasks.evaluate.evalsets import file_set
    from tasks.filters.decontam import eval_index, eval_sets_fingerprint

    rows = b"".join(json.dumps({"prompt": f"What is {i}+{i}?", "reference": str(2 * i)}).encode() + b"\n"
                    for i in range(5))
    (tmp_path / "qa.jsonl").write_bytes(rows)
    s3.client().put_object(Bucket=BUCKET, Key="evalsets/qa.jsonl", Body=rows)
    url = f"s3://{BUCKET}/evalsets/qa.jsonl"
    remote = file_set(EvalSetConfig(name="qa", path=url), None)
    here = file_set(EvalSetConfig(name="qa", path=str(tmp_path / "qa.jsonl")), None)
    assert remote.items == here.items and remote.source == url
    assert (eval_index(url, 3) == eval_index(tmp_path / "qa.jsonl", 3)).all()
    from schemas.filters import DecontamParams
    before = eval_sets_fingerprint(DecontamParams(sources={"qa": url}))
    s3.client().put_object(Bucket=BUCKET, Key="evalsets/qa.jsonl", Body=rows + rows)
    assert eval_sets_fingerprint(DecontamParams(sources={"qa": url})) != before  # a changed object: a new key
    assert len(file_set(EvalSetConfig(name="qa", path=url), None).items) == 10  # ... and a fresh copy
