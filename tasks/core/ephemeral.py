"""A temporary Prefect server that dies with the process that started it.

Prefect starts its temporary server as a plain child process, so a ``kill -9`` of the run leaves it running
(about 200 MB). The CLI starts the same server itself (the uvicorn command Prefect uses) with
``PR_SET_PDEATHSIG``: the kernel sends it SIGTERM when its parent dies, however the parent dies. Its output
goes to a log file, not the console (Prefect's shutdown prints tracebacks). Linux only; elsewhere Prefect's
own temporary server is used.
"""
from __future__ import annotations

import atexit
import ctypes
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

PR_SET_PDEATHSIG = 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with(parent: int):  # noqa: ANN202 - a preexec_fn
    def setup() -> None:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before prctl: nobody is left to serve
            os._exit(1)
    return setup


@dataclass
class TemporaryServer:
    proc: subprocess.Popen
    url: str  # the API URL, ending in /api
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_temporary_server(log_dir: Path, timeout: float = 120.0) -> TemporaryServer | None:
    """Start the server on a free loopback port and wait for its health check; None where it cannot be
    tied to this process (not Linux) or does not come up (Prefect then starts its own)."""
    spec = importlib.util.find_spec("prefect")
    if not sys.platform.startswith("linux") or spec is None or spec.origin is None:
        return None
    port = _free_port()
    log = log_dir / f"prefect-server-{os.getpid()}.log"
    env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        out = open(log, "ab")  # noqa: SIM115 - handed to the child, closed right after
    except OSError:  # the workdir is checked by preflight; its log is a nicety
        return None
    with out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", str(Path(spec.origin).parent.parent), "--factory",
             "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port),
             "--log-level", "error", "--lifespan", "on"],
            env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=_die_with(os.getpid()))  # noqa: PLW1509 - no threads run yet in the CLI
    server = TemporaryServer(proc, f"http://127.0.0.1:{port}/api", log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{server.url}/health", timeout=2) as resp:
                if resp.status == 200:
                    # atexit runs last-registered first: registered before Prefect starts its workers, the
                    # server outlives their final flush of logs and events.
                    atexit.register(server.stop)
                    return server
        except OSError:
            pass
        time.sleep(0.2)
    server.stop()
    return None
