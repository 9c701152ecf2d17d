"""Preflight of every path and server a config names, against real servers and files: each problem is found
before any work starts, named by its config key; and the stale temporary directories of dead runs go."""
from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading

import pytest

from schemas.pipeline import validate_config
from tasks.core import recovery
from tasks.core.paths import check_config_paths


@pytest.fixture
def web():
    """A real HTTP server: /data.jsonl exists, everything else is 404 (like a web server that is not MLflow)."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self, body: bool) -> None:
            found = self.path == "/data.jsonl"
            self.send_response(200 if found else 404)
            self.end_headers()
            if body:
                self.wfile.write(b'{"text": "x"}\n' if found else b"not found")

        def do_GET(self):  # noqa: N802 (stdlib name)
            self._answer(True)

        def do_HEAD(self):  # noqa: N802
            self._answer(False)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cfg_with(tmp_path, sources, filters=None, **extra):
    data = {"workdir": str(tmp_path / "work"), "ingest": {"sources": sources},
            "tracking": {"tracking_uri": f"sqlite:///{tmp_path / 'mlruns.db'}"}, **extra}
    if filters is not None:
        data["filters"] = {"filters": filters}
    return validate_config(data)


def test_every_named_path_is_checked_and_named_by_its_key(tmp_path, web):
    good = tmp_path / "good.jsonl"
    good.write_text('{"text": "x"}\n')
    cfg = cfg_with(tmp_path, [
        {"name": "ok", "path": str(good)},
        {"name": "glob", "path": str(tmp_path / "*.jsonl")},
        {"name": "missing", "path": str(tmp_path / "nope.jsonl")},
        {"name": "noglob", "path": str(tmp_path / "none-*.csv")},
        {"name": "saved", "path": f"disk:{tmp_path / 'no-saved'}"},
        {"name": "s3", "path": "s3://bucket/data.jsonl"},
        {"name": "web_ok", "path": f"{web}/data.jsonl"},
        {"name": "web_404", "path": f"{web}/gone.jsonl"},
        {"name": "web_down", "path": f"http://127.0.0.1:{closed_port()}/x.jsonl"},
        {"name": "hub", "path": "hf:nobody/not-in-the-cache"},  # the tests run with HF_HUB_OFFLINE=1
    ], filters=[{"name": "decontaminate", "params": {"sources": {"mmlu": str(tmp_path / "mmlu.jsonl")}}}],
        model={"name_or_path": str(tmp_path / "no-model")},
        evaluate={"eval_sets": [{"name": "gsm", "path": str(tmp_path / "gsm.jsonl")}]})
    problems = "\n".join(check_config_paths(cfg, timeout=2))
    for key in ("sources[2] (missing)", "sources[3] (noglob)", "sources[4] (saved)", "sources[5] (s3)",
                "sources[7] (web_404)", "sources[8] (web_down)", "sources[9] (hub)", "params.sources.mmlu",
                "model.name_or_path", "evaluate.eval_sets[0] (gsm).path"):
        assert key in problems, (key, problems)
    for key in ("(ok)", "(glob)", "(web_ok)"):
        assert key not in problems
    # s3fs is a dependency now: the s3 source is checked against the store (here: no credentials, no server)
    assert "s3://bucket/data.jsonl" in problems and "HTTP 404" in problems and "mmlu.jsonl does not exist" in problems
    assert "offline (HF_HUB_OFFLINE) and not in the local cache" in problems
    with pytest.raises(recovery.PreflightError, match="preflight failed") as err:
        recovery.preflight(cfg, check_servers=False)
    assert "params.sources.mmlu" in str(err.value)  # found before ingest and dedup run


def test_tracking_uri_scheme_and_a_server_that_is_not_mlflow(tmp_path, web):
    with pytest.raises(recovery.PreflightError, match="scheme 'ftp'"):
        recovery.check_tracking("ftp://example.org/mlruns")
    with pytest.raises(recovery.PreflightError, match="not an MLflow tracking server.*HTTP 404"):
        recovery.check_tracking(web, timeout=2, attempts=1)
    with pytest.raises(recovery.PreflightError, match="does not accept connections"):
        recovery.check_tracking(f"postgresql://u:p@127.0.0.1:{closed_port()}/db", timeout=2)
    recovery.check_tracking(f"sqlite:///{tmp_path / 'm.db'}")


def test_preflight_removes_stale_tmp_dirs_of_dead_runs(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    source = tmp_path / "s.jsonl"
    source.write_text('{"text": "x"}\n')
    cfg = cfg_with(tmp_path, [{"name": "s", "path": str(source)}])
    dead = tmp_path / "work" / "stages" / "ingest" / f".abc.tmp-{child.pid}"
    live = tmp_path / "work" / "stages" / "ingest" / f".def.tmp-{os.getpid()}"
    for d in (dead, live):
        d.mkdir(parents=True)
        (d / "part-00000.parquet").write_bytes(b"half")
    os.environ.setdefault("PEFTPIPE_MIN_FREE_MB", "16")
    recovery.preflight(cfg, check_servers=False)
    assert not dead.exists() and live.is_dir()


def test_mlflow_retries_give_up_within_the_budget_on_a_server_that_never_answers(monkeypatch):
    """A server that accepts connections and never answers: the MLflow client under lost_after_s=8 makes
    exactly 3 attempts, then raises (MLflow's default would retry 7 times with 120 s timeouts)."""
    env = recovery.mlflow_retry_env(8)
    assert recovery.worst_case_request_s(env) <= 8 / 2
    assert recovery.worst_case_request_s(recovery.mlflow_retry_env(60)) <= 30
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted = []

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(conn)  # held open, never answered

    threading.Thread(target=accept, daemon=True).start()
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=f"http://127.0.0.1:{listener.getsockname()[1]}")
    with pytest.raises(MlflowException, match="Max retries exceeded"):
        client.search_experiments()
    listener.close()
    assert len(accepted) == int(env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]) + 1
