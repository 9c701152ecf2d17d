"""The real CLI on messy settings: every failure is its exit code and one ``peftpipe:`` line, never a
traceback; preflight finds bad paths and servers before any work; nothing is left behind after a kill."""
from __future__ import annotations

import http.server
import os
import signal
import threading
from pathlib import Path

import psutil
import pytest

from tests.reliability.harness import cli_env, start_run, wait_for


@pytest.fixture
def not_mlflow():
    """A real web server that is not MLflow: 404 on every path."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (stdlib name)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def dead_pid() -> int:
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.parametrize("case", ["decontam", "source", "scheme", "not_mlflow", "s3"])
def test_preflight_failures_exit_3_with_one_line(tmp_path, case, not_mlflow):
    workdir = tmp_path / "work"
    stale = workdir / "stages" / "ingest" / f".abc.tmp-{dead_pid()}"  # a killed run's leftover
    stale.mkdir(parents=True)
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    overrides, expect = [], ""
    if case == "decontam":  # found before ingest and dedup run, not after
        overrides = [f"filters.filters=[{{name: decontaminate, params: {{sources: {{mmlu: {tmp_path}/mmlu.jsonl}}}}}}]"]
        expect = "params.sources.mmlu"
    elif case == "source":
        overrides, expect = [f"ingest.sources.0.path={tmp_path}/nope.jsonl"], "nope.jsonl does not exist"
    elif case == "s3":
        # s3fs is installed (a dependency): the store is asked, and refuses or cannot be reached
        overrides, expect = ["ingest.sources.0.path=s3://bucket/data.jsonl"], "(sample).path: s3://bucket/data.jsonl"
    elif case == "scheme":
        uri, expect = "ftp://example.org/mlruns", "scheme 'ftp'"
    else:
        uri, expect = not_mlflow, "not an MLflow tracking server"
    run = start_run(tmp_path, workdir, uri, overrides, command="curate")
    assert run.wait(timeout=300) == 3, run.tail()
    out = run.output()
    assert expect in out and "peftpipe: preflight failed" in out and "Traceback" not in out, out
    assert not stale.exists()  # removed at the start of the next run, even one that fails preflight
    assert not any(p for p in (workdir / "stages").glob("*/*") if not p.name.startswith("."))  # no work done


@pytest.mark.slow
def test_nothing_left_to_train_on_is_exit_7_with_the_counts(tmp_path, prefect_api):
    env = cli_env(tmp_path, PREFECT_API_URL=prefect_api)
    workdir, uri = tmp_path / "work", f"sqlite:///{tmp_path / 'mlruns.db'}"
    tok = start_run(tmp_path, workdir, uri, ["tokenize.max_seq_len=16"], env=dict(env), log_name="tok.log",
                    command="train")
    assert tok.wait() == 7, tok.tail()
    out = tok.output()
    assert "peftpipe: nothing left to train on: tokenize: all" in out and "too_long" in out, tok.tail()
    assert "Traceback" not in out
    assert not list(workdir.glob("adapters/*/checkpoints/step-*"))  # failed before any training step
    filtered = start_run(tmp_path, workdir, uri, ["filters.min_rating.threshold=99"], env=dict(env),
                         log_name="filtered.log", command="curate")
    assert filtered.wait() == 7, filtered.tail()
    out = filtered.output()
    assert "peftpipe: nothing left to train on: nothing reached training in split" in out
    assert "low_rating=" in out and "Traceback" not in out


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.mark.slow
def test_temporary_prefect_server_dies_with_its_killed_parent(tmp_path):
    workdir = tmp_path / "work"
    run = start_run(tmp_path, workdir, f"sqlite:///{tmp_path / 'mlruns.db'}", command="curate")  # no PREFECT_API_URL
    try:
        server = wait_for(lambda: next((c for c in _children(run.proc.pid) if "uvicorn" in _cmdline(c)), None),
                          run.proc, timeout=300)
        assert server is not None, run.tail()
        os.kill(run.proc.pid, signal.SIGKILL)  # the CLI alone, as `kill -9 PID` does
        run.proc.wait()
        try:
            psutil.Process(server).wait(timeout=300)  # returns when the server process is gone
        except (psutil.NoSuchProcess, psutil.TimeoutExpired):  # gone already; or still there, asserted below
            pass
        assert "uvicorn" not in _cmdline(server), "the temporary Prefect server outlived its parent"
    finally:
        try:
            os.killpg(run.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
