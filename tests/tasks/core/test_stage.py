import json

import pyarrow as pa
import pytest

from schemas.record import RECORD_SCHEMA
from tasks.core.stage import (
    Ledger,
    LedgerError,
    ShardWriter,
    count_rows,
    digest,
    is_complete,
    read_table,
    run_stage,
    shard_paths,
)


def records(n, start=0):
    return pa.Table.from_pylist([
        {"id": f"r{i}", "source": "s", "messages": [{"role": "user", "content": f"q{i}"}],
         "annotations": [], "meta": "{}"} for i in range(start, start + n)], schema=RECORD_SCHEMA)


def test_ledger_must_balance():
    led = Ledger("x", n_in=5, kept=3)
    led.drop("bad", 1)
    with pytest.raises(LedgerError, match="in=5"):
        led.check()
    led.drop("worse", 1)
    led.check()
    assert Ledger.from_dict(led.to_dict()).dropped == {"bad": 1, "worse": 1}


def test_shard_writer_rolls_shards_and_keeps_order(tmp_path):
    with ShardWriter(tmp_path / "d", RECORD_SCHEMA, shard_rows=4) as w:
        w.write(records(3))
        w.write(records(7, start=3))
    assert len(shard_paths(tmp_path / "d")) == 3
    assert count_rows(tmp_path / "d") == 10
    assert read_table(tmp_path / "d")["id"].to_pylist() == [f"r{i}" for i in range(10)]


def test_empty_output_still_has_schema(tmp_path):
    ShardWriter(tmp_path / "d", RECORD_SCHEMA).close()
    assert read_table(tmp_path / "d").schema == RECORD_SCHEMA


def test_run_stage_is_atomic_and_reused(tmp_path):
    calls = []

    def body(out):
        calls.append(out)
        with ShardWriter(out / "data", RECORD_SCHEMA) as w:
            w.write(records(2))
        return Ledger("s", n_in=2, kept=2)

    first = run_stage(tmp_path, "s", "k1", body)
    again = run_stage(tmp_path, "s", "k1", body)
    assert len(calls) == 1 and first.path == again.path and is_complete(first.path)
    assert json.loads((first.path / "stats.json").read_text())["kept"] == 2

    def crash(out):
        (out / "data").mkdir()
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        run_stage(tmp_path, "s", "k2", crash)
    assert not (tmp_path / "stages/s/k2").exists()
    assert not list((tmp_path / "stages/s").glob(".k2.tmp*"))


def test_unbalanced_stage_never_completes(tmp_path):
    with pytest.raises(LedgerError):
        run_stage(tmp_path, "s", "k", lambda out: Ledger("s", n_in=3, kept=1))
    assert not (tmp_path / "stages/s/k").exists()


def test_digest_is_stable_and_sensitive():
    assert digest("a", {"x": 1, "y": 2}) == digest("a", {"y": 2, "x": 1})
    assert digest("a", {"x": 1}) != digest("a", {"x": 2})


def test_io_retries_retry_transient_errors_only(prefect_harness):
    from prefect import flow, task

    from tasks.core.stage import IO_RETRIES

    calls = {"flaky": 0, "missing": 0}

    @task(**{**IO_RETRIES, "retry_delay_seconds": 0})
    def flaky():
        calls["flaky"] += 1
        if calls["flaky"] < 3:
            raise ConnectionError("hub unreachable")
        return "ok"

    @task(**{**IO_RETRIES, "retry_delay_seconds": 0})
    def missing():
        calls["missing"] += 1
        raise FileNotFoundError("data/nope.jsonl")

    @flow
    def run():
        return flaky(), missing(return_state=True)

    result, state = run()
    assert result == "ok" and calls["flaky"] == 3
    assert state.is_failed() and calls["missing"] == 1
