"""Start and stop the Prefect and MLflow servers, set up work pools, start workers.

    python scripts/servers.py start [--postgres URL] [--prefect-port 4200] [--mlflow-port 5000]
    python scripts/servers.py setup [--gpus N]        # work pools + the `gpu` limit (default: this node's GPUs)
    python scripts/servers.py worker --pool peftpipe-cpu
    python scripts/servers.py stop

Both servers bind 127.0.0.1. The default profile keeps everything in SQLite (Prefect in $PREFECT_HOME,
MLflow in ./mlruns.db, the file the CLI's default config writes to, so runs made without a server show
up too). The production profile (``--postgres postgresql://user:pw@host:port``) puts both on PostgreSQL,
databases ``prefect`` and ``mlflow``. Started servers are remembered by pid in ``.cache/servers/`` and
stopped by those pids only. The tests import these functions to run servers on free ports.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's bin: prefect and mlflow live beside its python
STATE = ROOT / ".cache" / "servers"
CPU_POOL, GPU_POOL, GPU_LIMIT = "peftpipe-cpu", "peftpipe-gpu", "gpu"
# Offline and quiet: no telemetry calls that can only fail, no update checks.
QUIET_ENV = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
             "DO_NOT_TRACK": "true", "PREFECT_UI_SHOW_PROMOTIONAL_CONTENT": "false"}


class ServerError(RuntimeError):
    """A server did not come up; the message holds the end of its log."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prefect_db_url(postgres: str | None, home: Path) -> str:
    """Prefect's database: SQLite in its home, or the ``prefect`` database of a PostgreSQL server."""
    if postgres:
        return postgres.replace("postgresql://", "postgresql+asyncpg://", 1).rstrip("/") + "/prefect"
    return f"sqlite+aiosqlite:///{home / 'prefect.db'}"


def mlflow_db_url(postgres: str | None, sqlite_path: Path) -> str:
    if postgres:  # psycopg2 named explicitly: SQLAlchemy 2.1 defaults postgresql:// to psycopg 3
        return postgres.replace("postgresql://", "postgresql+psycopg2://", 1).rstrip("/") + "/mlflow"
    return f"sqlite:///{sqlite_path}"


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    """Poll ``url`` until it answers 200; fail early (with the log's tail) if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServerError(f"{proc.args[0]} exited with {proc.returncode}:\n{tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise ServerError(f"{url} did not answer within {timeout:.0f}s:\n{tail(log)}")


def tail(log: Path | None, n: int = 40) -> str:
    if log is None or not log.exists():
        return ""
    return "\n".join(log.read_text(errors="replace").splitlines()[-n:])


def spawn(cmd: list[str], env: Mapping[str, str], log: Path, cwd: Path = ROOT) -> subprocess.Popen:
    """Start a long-running child in its own session, so stopping it also stops what it forked (workers)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, env={**os.environ, **QUIET_ENV, **env}, cwd=cwd, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


@dataclass
class Server:
    """A server child process: where it answers and where it logs."""

    proc: subprocess.Popen
    url: str
    health: str
    log: Path

    def wait(self, timeout: float = 180) -> Server:
        try:
            wait_http(self.health, timeout, self.proc, self.log)
        except ServerError:
            stop(self.proc)
            raise
        return self

    def stop(self) -> None:
        stop(self.proc)


def launch_prefect(port: int, home: Path, log: Path, database_url: str | None = None) -> Server:
    """``prefect server start`` on 127.0.0.1:port with its state (and SQLite database) in ``home``; no wait."""
    home.mkdir(parents=True, exist_ok=True)
    env = {"PREFECT_HOME": str(home), "PREFECT_API_DATABASE_CONNECTION_URL": database_url or prefect_db_url(None, home),
           "PREFECT_SERVER_API_HOST": "127.0.0.1", "PREFECT_SERVER_API_PORT": str(port)}
    proc = spawn([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)], env, log)
    url = f"http://127.0.0.1:{port}"
    return Server(proc, url, f"{url}/api/health", log)


def launch_mlflow(port: int, backend_uri: str, artifacts: Path, log: Path) -> Server:
    """``mlflow server`` on 127.0.0.1:port, proxying artifacts into ``artifacts``; no wait."""
    artifacts.mkdir(parents=True, exist_ok=True)
    cmd = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", backend_uri, "--artifacts-destination", str(artifacts)]
    url = f"http://127.0.0.1:{port}"
    return Server(spawn(cmd, {}, log), url, f"{url}/health", log)


def start_servers(prefect: Server, mlflow: Server, timeout: float = 180) -> tuple[Server, Server]:
    """Wait for two launched servers (they start in parallel); stop both if either fails."""
    try:
        return prefect.wait(timeout), mlflow.wait(timeout)
    except ServerError:
        prefect.stop()
        mlflow.stop()
        raise


def worker_command(pool: str, limit: int | None = None) -> list[str]:
    """``prefect worker start`` on ``pool``; ``limit``: flow runs this worker runs at once (its node's GPUs)."""
    cmd = [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process"]
    return cmd + ["--limit", str(limit)] if limit is not None else cmd


def start_worker(api_url: str, pool: str, log: Path, home: Path | None = None, poll_seconds: float = 10,
                 env: Mapping[str, str] | None = None, limit: int | None = None) -> subprocess.Popen:
    """A process worker on ``pool``; its flow runs inherit the worker's environment."""
    wenv = {"PREFECT_API_URL": api_url, "PREFECT_WORKER_QUERY_SECONDS": str(poll_seconds), **(env or {})}
    if home is not None:
        wenv["PREFECT_HOME"] = str(home)
    return spawn(worker_command(pool, limit), wenv, log)


def stop(proc: subprocess.Popen | int, timeout: float = 10) -> None:
    """Stop a child we started (and its session's processes): SIGTERM, then SIGKILL after ``timeout``."""
    pid = proc if isinstance(proc, int) else proc.pid
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if isinstance(proc, subprocess.Popen):
            if proc.poll() is not None:
                break
        else:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
        time.sleep(0.2)
    else:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def prefect_cli(api_url: str, *args: str, home: Path | None = None, check: bool = True,
                timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a ``prefect`` command against ``api_url`` from the repository root."""
    env = {**os.environ, **QUIET_ENV, "PREFECT_API_URL": api_url}
    if home is not None:
        env["PREFECT_HOME"] = str(home)
    res = subprocess.run([str(BIN / "prefect"), *args], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=timeout)
    if check and res.returncode != 0:
        raise ServerError(f"prefect {' '.join(args)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res


def node_gpus(requested: int | None = None) -> int:
    """GPU slots of this node: ``requested``, else its visible GPUs (``CUDA_VISIBLE_DEVICES`` or what torch
    sees), at least 1 so that a CPU-only node can still run one training at a time."""
    if requested is not None:
        return requested
    from tasks.train.launch import visible_gpus

    return max(1, visible_gpus())


def setup_orchestration(api_url: str, gpus: int = 1) -> None:
    """Create (or update) the two process work pools and the ``gpu`` global concurrency limit; idempotent.

    The GPU pool's concurrency limit is the number of GPUs of its node, so its worker never starts more flow
    runs than there are GPUs; the global limit also covers the training inside the ad hoc pipeline deployment.
    One client in this process instead of a ``prefect`` CLI call per object: each CLI call costs seconds.
    """
    import asyncio

    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.workers.process import ProcessWorker

    async def setup() -> None:
        template = ProcessWorker.get_default_base_job_template()
        async with PrefectClient(api_url) as client:
            for name, limit in ((CPU_POOL, None), (GPU_POOL, gpus)):
                await client.create_work_pool(
                    WorkPoolCreate(name=name, type="process", base_job_template=template, concurrency_limit=limit),
                    overwrite=True)
            await client.upsert_global_concurrency_limit_by_name(GPU_LIMIT, gpus)

    asyncio.run(setup())


def _save(name: str, proc: subprocess.Popen, info: dict) -> None:
    STATE.mkdir(parents=True, exist_ok=True)
    (STATE / f"{name}.json").write_text(json.dumps({"pid": proc.pid, **info}) + "\n")


def _running(name: str) -> dict | None:
    path = STATE / f"{name}.json"
    if not path.exists():
        return None
    info = json.loads(path.read_text())
    try:
        os.kill(info["pid"], 0)
    except ProcessLookupError:
        path.unlink()
        return None
    return info


def cmd_start(args: argparse.Namespace) -> int:
    home = Path(os.environ.get("PREFECT_HOME", Path.home() / ".prefect"))
    launched = {}
    if _running("prefect") is None:
        db = prefect_db_url(args.postgres, home)
        launched["prefect"] = (launch_prefect(args.prefect_port, home, STATE / "prefect-server.log", db), db)
    if _running("mlflow") is None:
        db = mlflow_db_url(args.postgres, ROOT / "mlruns.db")
        launched["mlflow"] = (launch_mlflow(args.mlflow_port, db, ROOT / "mlartifacts", STATE / "mlflow-server.log"),
                              db)
    try:
        for name, (server, db) in launched.items():
            server.wait()
            _save(name, server.proc, {"url": server.url, "db": db.split("@")[-1]})
    except ServerError:
        for server, _ in launched.values():
            server.stop()
        raise
    prefect, mlflow = _running("prefect"), _running("mlflow")
    print(f"Prefect UI: {prefect['url']}   (database {prefect['db']})")
    print(f"MLflow UI:  {mlflow['url']}   (database {mlflow['db']})")
    print(f"Send flow runs there:  export PREFECT_API_URL={prefect['url']}/api")
    if args.postgres:  # runs must log to the MLflow server, not to the default config's SQLite file
        print(f"MLflow runs of workers: export PEFTPIPE_SET='tracking.tracking_uri={mlflow['url']}' "
              "before `make worker`")
        print(f"MLflow runs of the CLI: peftpipe run --set tracking.tracking_uri={mlflow['url']}")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    for name in ("worker", "mlflow", "prefect"):
        for path in sorted(STATE.glob(f"{name}*.json")):
            info = json.loads(path.read_text())
            stop(info["pid"])
            path.unlink()
            print(f"stopped {path.stem} (pid {info['pid']})")
    return 0


def cmd_setup(args: argparse.Namespace) -> int:
    gpus = node_gpus(args.gpus)
    setup_orchestration(args.api_url, gpus)
    print(f"work pools {CPU_POOL}, {GPU_POOL} (concurrency {gpus}); global concurrency limit "
          f"{GPU_LIMIT!r} = {gpus}" + ("" if args.gpus is not None else " (this node's visible GPUs)"))
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    # A GPU worker starts no more flow runs at once than its own node has GPUs (each node its own count).
    limit = node_gpus(args.limit) if args.pool == GPU_POOL or args.limit is not None else None
    proc = start_worker(args.api_url, args.pool, STATE / f"worker-{args.pool}.log", limit=limit)
    _save(f"worker-{args.pool}", proc, {"pool": args.pool})
    print(f"worker on {args.pool} (pid {proc.pid}), log {STATE / f'worker-{args.pool}.log'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    api_default = os.environ.get("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    p = sub.add_parser("start", help="start Prefect and MLflow servers on 127.0.0.1")
    p.add_argument("--prefect-port", type=int, default=4200)
    p.add_argument("--mlflow-port", type=int, default=5000)
    p.add_argument("--postgres", default=os.environ.get("PEFTPIPE_POSTGRES"), metavar="URL",
                   help="production profile: postgresql://user:pw@host:port (databases prefect and mlflow)")
    p.set_defaults(func=cmd_start)
    sub.add_parser("stop", help="stop the servers and workers started here").set_defaults(func=cmd_stop)
    p = sub.add_parser("setup", help="create the work pools and the gpu concurrency limit")
    p.add_argument("--api-url", default=api_default)
    p.add_argument("--gpus", type=int, default=None,
                   help="slots of the gpu limit (default: this node's visible GPUs, CUDA_VISIBLE_DEVICES)")
    p.set_defaults(func=cmd_setup)
    p = sub.add_parser("worker", help="start a process worker in the background")
    p.add_argument("--pool", default=CPU_POOL)
    p.add_argument("--limit", type=int, default=None,
                   help="flow runs at once (default on the GPU pool: this node's visible GPUs)")
    p.add_argument("--api-url", default=api_default)
    p.set_defaults(func=cmd_worker)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ServerError as exc:
        print(f"servers: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
