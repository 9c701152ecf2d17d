"""Unreachable servers, for real: closed ports, a server that comes up late, and an MLflow server killed in the
middle of training. The CLI must stop fast with the URL in its message before any curation or training, follow
the retry policy, and lose no data: the next run reuses every finished stage and resumes training."""
from __future__ import annotations

import http.server
import os
import signal
import socket
import threading
import time

import pytest
from mlflow import MlflowClient

from tasks.core import recovery
from tests.reliability.harness import (
    assert_nothing_partial_looks_complete,
    cli_env,
    complete_stage_dirs,
    start_run,
    wait_for,
)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("which", ["mlflow", "prefect"])
def test_unreachable_server_fails_fast_before_any_work(tmp_path, which):
    url = f"http://127.0.0.1:{closed_port()}"
    uri = url if which == "mlflow" else f"sqlite:///{tmp_path / 'mlruns.db'}"
    env = cli_env(tmp_path, PEFTPIPE_PREFLIGHT_ATTEMPTS="2")
    if which == "prefect":
        env["PREFECT_API_URL"] = f"{url}/api"
    t0 = time.monotonic()
    run = start_run(tmp_path, tmp_path / "work", uri, env=env)
    assert run.wait(timeout=300) == 3, run.tail()
    elapsed = time.monotonic() - t0
    out = run.output()
    name = "MLflow tracking server" if which == "mlflow" else "Prefect server (PREFECT_API_URL)"
    assert f"{name} at {url}" in out and "cannot be reached after 2 attempt(s)" in out, out
    assert "Traceback" not in out
    assert not (tmp_path / "work" / "stages").exists()  # nothing started: no curation, no training
    assert elapsed < 120, elapsed  # imports on a busy CI box, 2 attempts of a refused connection, 1 s apart


def test_retry_policy_tries_again_after_the_backoff():
    """A server still starting (HTTP 503 to the first request) is asked again after the 1 s backoff and found,
    not reported down. The server answers per request, so the verdict never depends on how fast this box is."""
    hits: list[float] = []

    class Starting(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (stdlib name)
            hits.append(time.monotonic())
            self.send_response(503 if len(hits) == 1 else 200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Starting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        recovery.check_http(f"http://127.0.0.1:{server.server_port}/health", "test server", "", timeout=60,
                            attempts=3)
    finally:
        server.shutdown()
    assert len(hits) == 2 and hits[1] - hits[0] >= 1.0  # one failed attempt, one backoff, then found


@pytest.mark.slow
def test_mlflow_server_lost_mid_run_then_rerun_loses_nothing(tmp_path, prefect_api):
    """The tracking server dies while curation runs: the run fails naming the server, every finished stage
    stays; with the server back, the rerun reuses them all and the dead attempt's run is marked FAILED."""
    from scripts.servers import free_port, launch_mlflow

    port = free_port()
    backend = f"sqlite:///{tmp_path / 'mlflow-server.db'}"
    server = launch_mlflow(port, backend, tmp_path / "artifacts", tmp_path / "mlflow.log").wait(timeout=300)
    workdir = tmp_path / "work"
    # The policy mid-run is MLflow's own request retries; kept short so a dead server fails the run quickly.
    env = cli_env(tmp_path, PREFECT_API_URL=prefect_api, MLFLOW_HTTP_REQUEST_MAX_RETRIES="1",
                  MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1", MLFLOW_HTTP_REQUEST_TIMEOUT="10")
    try:
        run = start_run(tmp_path, workdir, server.url, env=dict(env), log_name="lost.log", command="curate")
        assert wait_for(lambda: complete_stage_dirs(workdir).get("ingest"), run.proc), run.tail()
        os.killpg(server.proc.pid, signal.SIGKILL)  # the tracking server dies under the run
        server.proc.wait()
        assert run.wait(timeout=300) == 5, run.tail()
        assert (f"peftpipe: the MLflow tracking server at {server.url} became unreachable during the run"
                in run.output()), run.tail()
        stages = complete_stage_dirs(workdir)
        assert "ingest" in stages  # finished stages are kept (the run fails at its next MLflow call)
        assert_nothing_partial_looks_complete(workdir)

        server = launch_mlflow(port, backend, tmp_path / "artifacts", tmp_path / "mlflow2.log").wait(timeout=300)
        again = start_run(tmp_path, workdir, server.url, env=dict(env), log_name="again.log", command="curate")
        assert again.wait() == 0, again.tail()
        after = complete_stage_dirs(workdir)
        assert {"ingest", "split"} <= set(after)
        assert all(after[name] == path for name, path in stages.items())  # reused, not recomputed
        client = MlflowClient(tracking_uri=server.url)
        runs = sorted(client.search_runs([client.get_experiment_by_name("peftpipe").experiment_id]),
                      key=lambda r: r.info.start_time)
        assert [r.info.status for r in runs] == ["FAILED", "FINISHED"]
        assert runs[1].data.metrics["split.in"] > 0
    finally:
        server.stop()
