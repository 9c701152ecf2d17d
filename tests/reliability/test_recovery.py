"""tasks.core.recovery on its own: stale runs of SIGKILLed owners, preflight against real sockets, secret scrubbing."""
import http.server
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from mlflow import MlflowClient

from tasks.core import recovery
from tasks.core.stage import publish_dir


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


@pytest.fixture
def http_server():
    """A real HTTP server on 127.0.0.1 answering every GET with the status in ``server.status``."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (stdlib name)
            self.send_response(self.server.status)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    server.status = 200
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


def test_pid_alive_tells_dead_and_reused_pids():
    assert recovery.pid_alive(os.getpid(), recovery.process_start_time(os.getpid()))
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not recovery.pid_alive(child.pid)
    if recovery.process_start_time(os.getpid()) is not None:  # Linux: a reused pid has another start time
        assert not recovery.pid_alive(os.getpid(), "1")


OWNER = textwrap.dedent("""
    import sys, time, mlflow
    from tasks.core.recovery import owner_tags
    mlflow.set_tracking_uri(sys.argv[1]); mlflow.set_experiment("exp")
    run = mlflow.start_run(tags=owner_tags())
    print(run.info.run_id, flush=True)
    time.sleep(600)
""")


def start_owner(uri: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-c", OWNER, uri], stdout=subprocess.PIPE, text=True,
                            start_new_session=True, cwd=os.getcwd())
    return proc, proc.stdout.readline().strip()


def test_killed_owner_run_is_marked_failed_live_one_is_not(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    killed, killed_id = start_owner(uri)
    alive, alive_id = start_owner(uri)
    try:
        os.killpg(killed.pid, signal.SIGKILL)  # no handler runs: the run stays RUNNING
        killed.wait()
        client = MlflowClient(tracking_uri=uri)
        assert client.get_run(killed_id).info.status == "RUNNING"
        assert recovery.mark_stale_runs_failed(uri, "exp") == [killed_id]
        run = client.get_run(killed_id)
        assert run.info.status == "FAILED" and run.info.end_time is not None
        assert "killed" in run.data.tags[recovery.FAILURE_TAG]
        assert client.get_run(alive_id).info.status == "RUNNING"  # a concurrent live run is left alone
        assert recovery.mark_stale_runs_failed(uri, "exp") == []
        assert recovery.mark_stale_runs_failed(uri, "no-such-experiment") == []
    finally:
        os.killpg(alive.pid, signal.SIGKILL)
        alive.wait()


def test_sweep_removes_only_dead_owners_tmp_dirs(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    dead = tmp_path / "stages" / "ingest" / f".abc.tmp-{child.pid}"
    live = tmp_path / "stages" / "ingest" / f".def.tmp-{os.getpid()}"
    done = tmp_path / "stages" / "ingest" / "abc"
    for d in (dead, live, done):
        d.mkdir(parents=True)
    assert recovery.sweep_stale_tmp(tmp_path) == [dead]
    assert live.is_dir() and done.is_dir() and not dead.exists()


def test_unreachable_mlflow_fails_fast_naming_the_url():
    url = f"http://127.0.0.1:{closed_port()}"
    t0 = time.monotonic()
    with pytest.raises(recovery.PreflightError) as err:
        recovery.check_tracking(url, timeout=2, attempts=2)
    assert time.monotonic() - t0 < 10
    assert url in str(err.value) and "MLflow" in str(err.value) and "2 attempt" in str(err.value)


def test_reachable_server_passes_and_credentials_are_reported(http_server):
    url = f"http://user:hunter22@127.0.0.1:{http_server.server_port}"
    recovery.check_tracking(url)
    http_server.status = 401
    with pytest.raises(recovery.PreflightError, match="refused our credentials") as err:
        recovery.check_tracking(url)
    assert "hunter22" not in str(err.value)  # the password is not echoed
    http_server.status = 503
    with pytest.raises(recovery.PreflightError, match="HTTP 503"):
        recovery.check_tracking(url, timeout=1, attempts=1)


def test_prefect_api_url_checked(monkeypatch):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url = f"http://127.0.0.1:{closed_port()}/api"
    with temporary_settings({PREFECT_API_URL: url}):
        with pytest.raises(recovery.PreflightError, match="Prefect server") as err:
            recovery.check_prefect(timeout=1, attempts=1)
    assert url in str(err.value)
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        recovery.check_prefect()  # the temporary local server needs no check


def test_unwritable_or_full_workdir(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(recovery.PreflightError, match="workdir .*a-file/work is not writable"):
        recovery.check_writable_dir(blocker / "work", "workdir")
    with pytest.raises(recovery.PreflightError, match="MiB free"):
        recovery.check_writable_dir(tmp_path / "ok", "workdir", min_free_mb=1e12)
    recovery.check_writable_dir(tmp_path / "ok", "workdir", min_free_mb=1)
    assert not list((tmp_path / "ok").iterdir())  # the probe file is gone


def test_scrub_env_tokens_patterns_and_url_passwords(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_abcdefghijklmnopqrstuvwxyz0123")
    monkeypatch.setenv("MY_SERVICE_PASSWORD", "correct-horse")
    text = ("token hf_abcdefghijklmnopqrstuvwxyz0123 pw correct-horse other ghp_0123456789abcdefghijklmn "
            "postgresql://admin:s3cret@db:5432/x")
    out = recovery.scrub(text)
    for secret in ("hf_abc", "correct-horse", "ghp_0123", "s3cret"):
        assert secret not in out
    assert "postgresql://admin:***@db:5432/x" in out
    params = recovery.scrub_params({"tracking.tracking_uri": "http://u:pw12345@h", "x.token": "abc",
                                    "train.lr": "0.001"})
    assert params == {"tracking.tracking_uri": "http://u:***@h", "x.token": "***", "train.lr": "0.001"}


def test_log_scrubber_cleans_records_of_every_logger(monkeypatch, caplog):
    monkeypatch.setenv("HF_TOKEN", "tok-0123456789")
    recovery.install_log_scrubber()
    with caplog.at_level(logging.INFO):
        logging.getLogger("prefect.anything").info("using %s", "tok-0123456789")
        logging.getLogger("x").warning("plain %d", 3)
    assert "tok-0123456789" not in caplog.text and "using ***" in caplog.text and "plain 3" in caplog.text


def test_publish_dir_keeps_a_concurrent_complete_output(tmp_path):
    def complete(p):
        return (p / "_SUCCESS").is_file()

    final = tmp_path / "out"
    first, second = tmp_path / ".out.tmp-1", tmp_path / ".out.tmp-2"
    for d, text in ((first, "first"), (second, "second")):
        d.mkdir()
        (d / "x").write_text(text)
        (d / "_SUCCESS").write_text("")
    assert publish_dir(first, final, complete) == final
    inode = (final / "x").stat().st_ino
    publish_dir(second, final, complete)  # the later twin does not replace what a reader may hold
    assert (final / "x").read_text() == "first" and (final / "x").stat().st_ino == inode
    assert not second.exists()
    leftover = tmp_path / "other"
    leftover.mkdir()  # incomplete: replaced
    third = tmp_path / ".other.tmp-3"
    third.mkdir()
    (third / "_SUCCESS").write_text("")
    publish_dir(third, leftover, complete)
    assert complete(leftover) and not third.exists()


def test_storage_errors_are_described_plainly(tmp_path):
    import errno

    full = recovery.describe_storage_error(OSError("103061 requested and 89056 written"), tmp_path)
    assert full.startswith(f"cannot write to workdir {tmp_path}: No space left on device (")
    assert "rerun" in full
    nospc = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x"))
    assert "No space left on device" in recovery.describe_storage_error(nospc, tmp_path)
    ro = OSError(errno.EROFS, "Read-only file system", str(tmp_path / "stages" / "x"))
    assert "Read-only file system" in recovery.describe_storage_error(ro, tmp_path)
    elsewhere = PermissionError(errno.EACCES, "Permission denied", "/etc/shadow")
    assert recovery.describe_storage_error(elsewhere, tmp_path) is None  # not a workdir problem
    assert recovery.describe_storage_error(ValueError("x"), tmp_path) is None


def test_lost_tracking_server_is_described_only_for_connection_failures():
    uri = "http://u:pw@127.0.0.1:5999"
    lost = RuntimeError("API request to http://127.0.0.1:5999/api/2.0/mlflow/runs/get failed with exception "
                        "HTTPConnectionPool(host='127.0.0.1', port=5999): Max retries exceeded")
    message = recovery.describe_tracking_error(lost, uri)
    assert "http://u:***@127.0.0.1:5999 became unreachable" in message and "pw" not in message
    assert recovery.describe_tracking_error(ValueError("bad value"), uri) is None
    assert recovery.describe_tracking_error(lost, "sqlite:///x.db") is None
