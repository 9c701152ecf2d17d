"""tasks.core.storage and run_stage on a real S3-compatible server (moto's server mode over HTTP): the marker
written last, a killed upload's leftovers replaced, the readers streaming shards from a URL, and the
preflight's sweep of a remote workdir's local scratch."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from schemas.pipeline import validate_config
from tasks.core import storage
from tasks.core.stage import (
    Ledger,
    ShardWriter,
    count_rows,
    is_complete,
    iter_batches,
    read_ledger,
    read_table,
    run_stage,
)
from tests.tasks.core.s3server import s3_server

BUCKET = "peftpipe-storage"
SCHEMA = pa.schema([("x", pa.int64())])


@pytest.fixture(scope="module")
def s3():
    with s3_server((BUCKET,)) as server:
        yield server


@pytest.fixture(autouse=True)
def scratch(tmp_path, monkeypatch):
    monkeypatch.setenv(storage.SCRATCH_ENV, str(tmp_path / "scratch"))
    return tmp_path / "scratch"


def keys(s3, prefix: str) -> list[str]:
    return sorted(o["Key"] for o in s3.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", []))


def body(calls: list):
    def write(tmp):
        calls.append(tmp)
        with ShardWriter(tmp / "data", SCHEMA, shard_rows=2) as w:
            w.write(pa.table({"x": [1, 2, 3]}))
        ledger = Ledger("t")
        ledger.n_in = ledger.kept = 3
        return ledger
    return write


def test_remote_stage_is_uploaded_marker_last_and_reused(s3, tmp_path):
    calls: list = []
    out = run_stage(f"s3://{BUCKET}/w1", "t", "k1", body(calls))
    assert out.url == f"s3://{BUCKET}/w1/stages/t/k1" and is_complete(out.url)
    assert keys(s3, "w1/") == [f"w1/stages/t/k1/{n}" for n in
                               ("_SUCCESS", "data/part-00000.parquet", "data/part-00001.parquet", "stats.json")]
    assert read_ledger(out.url).kept == 3
    # the readers stream the shards from the URL
    assert read_table(f"{out.url}/data")["x"].to_pylist() == [1, 2, 3] and count_rows(f"{out.url}/data") == 3
    assert [b.num_rows for b in iter_batches(f"{out.url}/data")] == [2, 1]
    assert sorted(p.name for p in out.data().iterdir()) == ["part-00000.parquet", "part-00001.parquet"]
    again = run_stage(f"s3://{BUCKET}/w1", "t", "k1", body(calls))
    assert again == out and len(calls) == 1  # complete in the store: the body does not run


def test_a_finished_remote_stage_ledger_is_read_from_the_store_once(s3):
    out = run_stage(f"s3://{BUCKET}/w-ledger", "t", "k1", body([]))
    first = out.ledger
    first.extra["edited"] = True  # a caller's edit never reaches the cache
    s3.client().delete_object(Bucket=BUCKET, Key="w-ledger/stages/t/k1/stats.json")
    again = out.ledger  # served without a second GET: the object is gone from the store now
    assert again.kept == 3 and again.extra == {} and again is not first


def test_a_killed_upload_is_not_trusted_and_its_leftovers_go(s3):
    client = s3.client()
    # what an upload killed before its marker leaves: a ledger and a shard this run will not write
    client.put_object(Bucket=BUCKET, Key="w2/stages/t/k1/stats.json", Body=b"{}")
    client.put_object(Bucket=BUCKET, Key="w2/stages/t/k1/data/part-00009.parquet", Body=b"half")
    assert not is_complete(f"s3://{BUCKET}/w2/stages/t/k1")
    calls: list = []
    out = run_stage(f"s3://{BUCKET}/w2", "t", "k1", body(calls))
    assert len(calls) == 1 and "w2/stages/t/k1/data/part-00009.parquet" not in keys(s3, "w2/")
    assert read_ledger(out.url).n_in == 3


def test_a_failing_stage_leaves_no_marker_and_no_scratch(s3, scratch):
    def broken(tmp):
        (tmp / "data").mkdir()
        (tmp / "data" / "part-00000.parquet").write_bytes(b"x")
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="boom"):
        run_stage(f"s3://{BUCKET}/w3", "t", "k1", broken)
    assert keys(s3, "w3/") == [] and list((scratch / "stages").iterdir()) == []


def test_write_bytes_and_local_paths(s3, tmp_path):
    storage.write_bytes(f"s3://{BUCKET}/f/a.json", b"{}")
    assert storage.read_text(f"s3://{BUCKET}/f/a.json") == "{}" and storage.exists(f"s3://{BUCKET}/f/a.json")
    storage.write_bytes(tmp_path / "a.json", b"[]")  # locally: a temporary sibling, then a rename
    assert (tmp_path / "a.json").read_bytes() == b"[]" and list(tmp_path.glob("a.json.tmp-*")) == []
    assert storage.local_workdir("work") == Path("work")
    assert storage.local_workdir(f"s3://{BUCKET}/w").is_relative_to(storage.scratch_root())


def test_preflight_of_a_remote_workdir_sweeps_its_scratch(s3, tmp_path, scratch):
    from tasks.core.recovery import preflight

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    stale = scratch / "stages" / f".ingest-abc.tmp-{child.pid}"  # a killed run's stage body, in the scratch
    stale.mkdir(parents=True)
    src = tmp_path / "s.jsonl"
    src.write_text('{"text": "x"}\n')
    cfg = validate_config({"workdir": f"s3://{BUCKET}/w4", "ingest": {"sources": [{"name": "s", "path": str(src)}]},
                           "storage": {"scratch_dir": str(scratch)}})
    preflight(cfg, check_servers=False)
    assert not stale.exists() and keys(s3, "w4/") == []  # the probe object is gone too


def test_an_endpoint_with_a_password_is_masked_where_the_config_is_shown(monkeypatch):
    from schemas.storage import StorageConfig

    cfg = StorageConfig(endpoint_url="http://minio:s3cr3t@127.0.0.1:9000")
    assert "s3cr3t" not in cfg.model_dump_json() and "minio:***@" in cfg.model_dump_json()
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://before")  # so the test undoes what configure sets
    storage.configure(cfg)  # the process itself uses the real value
    assert storage.endpoint_url() == "http://minio:s3cr3t@127.0.0.1:9000"


def test_the_store_failing_during_a_stage_is_told_plainly(s3, monkeypatch):
    """Credentials revoked while a stage runs: its upload fails inside s3fs, and the CLI's message (exit 4)
    says so, names the workdir and what to check, and shows no secret."""
    from tasks.core.recovery import describe_storage_error
    from tests.tasks.core.s3server import clear_clients

    def revoke_then_write(tmp):
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "revoked-" + s3.secret)
        clear_clients()
        return body([])(tmp)

    workdir = f"s3://{BUCKET}/w5"
    try:
        with pytest.raises(PermissionError) as caught:
            run_stage(workdir, "t", "k1", revoke_then_write)
    finally:
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.secret)
        clear_clients()
    message = describe_storage_error(caught.value, workdir)
    assert message.startswith(f"the object store of workdir {workdir} failed: PermissionError")
    assert "AWS_SECRET_ACCESS_KEY" in message and s3.secret not in message
    assert keys(s3, "w5/") == []  # nothing half-published
    assert describe_storage_error(PermissionError("not the store"), workdir) is None  # raised elsewhere
