"""A whole local deployment stack in one object: Prefect + MLflow servers, work pools, a worker, deployments.

    python scripts/stack.py up --dir .cache/stack      # start everything on free ports, deploy, print URLs
                                                       # (Ctrl-C stops it all)

The end-to-end test and the orchestration benchmark use ``Stack`` directly; everything binds 127.0.0.1 and
keeps its state (Prefect home, SQLite databases, MLflow artifacts, logs) under one directory.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scripts import servers  # noqa: E402

FINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


class Stack:
    """Servers on free ports, the peftpipe work pools, one process worker on the CPU pool, all deployments."""

    def __init__(self, directory: Path, postgres: str | None = None, worker_poll_seconds: float = 2):
        self.dir = Path(directory)
        self.home = self.dir / "prefect-home"
        self.postgres = postgres
        self.poll = worker_poll_seconds
        self.prefect: servers.Server | None = None
        self.mlflow: servers.Server | None = None
        self.worker = None
        self.timings: dict[str, float] = {}

    @property
    def api_url(self) -> str:
        return f"{self.prefect.url}/api"

    def _timed(self, name: str, start: float) -> None:
        self.timings[name] = round(time.monotonic() - start, 2)

    def start(self, worker: bool = True) -> Stack:
        t = time.monotonic()
        self.dir.mkdir(parents=True, exist_ok=True)
        prefect = servers.launch_prefect(servers.free_port(), self.home, self.dir / "prefect-server.log",
                                         servers.prefect_db_url(self.postgres, self.home))
        mlflow = servers.launch_mlflow(servers.free_port(), servers.mlflow_db_url(self.postgres, self.dir / "mlflow.db"),
                                       self.dir / "mlartifacts", self.dir / "mlflow-server.log")
        self.prefect, self.mlflow = servers.start_servers(prefect, mlflow)
        self._timed("servers", t)
        t = time.monotonic()
        servers.setup_orchestration(self.api_url, gpus=1)
        if worker:
            self.worker = servers.start_worker(self.api_url, servers.CPU_POOL, self.dir / "worker.log",
                                               home=self.home, poll_seconds=self.poll)
        self._timed("pools_and_worker", t)
        return self

    def cli(self, *args: str, timeout: float = 600) -> str:
        return servers.prefect_cli(self.api_url, *args, home=self.home, timeout=timeout).stdout

    def deploy(self) -> str:
        """``prefect deploy --all`` from the repository's prefect.yaml."""
        t = time.monotonic()
        out = self.cli("--no-prompt", "deploy", "--all")
        self._timed("deploy", t)
        return out

    def run_deployment(self, name: str, overrides: list[str], timeout: float = 600) -> str:
        """``prefect deployment run NAME --param overrides=[...] --watch``; returns the flow run id."""
        t = time.monotonic()
        out = self.cli("deployment", "run", name, "--param", f"overrides={json.dumps(overrides)}", "--watch",
                       "--watch-timeout", str(int(timeout)), timeout=timeout + 60)
        self._timed(f"run {name}", t)
        match = re.search(r"UUID: ([0-9a-f-]{36})", out)
        if not match:
            raise servers.ServerError(f"no flow run id in:\n{out}")
        return match.group(1)

    def api(self, method: str, path: str, body: dict[str, Any] | None = None, attempts: int = 5) -> Any:
        """One call to the Prefect REST API (plain HTTP: no client settings to juggle in the caller).

        Retries 429/502/503 with backoff, as Prefect's own client does: a busy server answers 503 when its
        database is locked for a moment (seen once on a loaded CI box, on a DELETE)."""
        import httpx
        for attempt in range(attempts):
            resp = httpx.request(method, f"{self.api_url}{path}", json=body, timeout=30)
            if resp.status_code not in (429, 502, 503) or attempt == attempts - 1:
                break
            time.sleep(2 ** attempt)
        resp.raise_for_status()
        return resp.json() if resp.content else None

    def flow_runs(self, **flow_run_filter: Any) -> list[dict[str, Any]]:
        return self.api("POST", "/flow_runs/filter", {"flow_runs": flow_run_filter, "limit": 200})

    def wait_for(self, predicate, timeout: float = 120, interval: float = 1.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if value := predicate():
                return value
            time.sleep(interval)
        raise TimeoutError(f"condition not met within {timeout:.0f}s")

    def stop(self) -> None:
        for proc in (self.worker, self.mlflow, self.prefect):
            if proc is None:
                continue
            try:
                proc.stop() if isinstance(proc, servers.Server) else servers.stop(proc)
            except Exception as exc:  # keep stopping the others
                print(f"stack: stopping {proc}: {exc}", file=sys.stderr)

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("up",))
    parser.add_argument("--dir", default=".cache/stack")
    parser.add_argument("--postgres", default=None, metavar="URL")
    args = parser.parse_args(argv)
    with Stack(Path(args.dir).resolve(), args.postgres) as stack:
        stack.start()
        stack.deploy()
        print(f"Prefect UI: {stack.prefect.url}\nMLflow UI:  {stack.mlflow.url}\n"
              f"export PREFECT_API_URL={stack.api_url}\n"
              f"prefect deployment run peftpipe-pipeline/pipeline --param "
              f"'overrides=[\"tracking.tracking_uri={stack.mlflow.url}\"]'\n(Ctrl-C stops everything)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
