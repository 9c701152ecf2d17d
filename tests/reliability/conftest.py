"""Fixtures of the fault suite: one Prefect server for the whole suite (one start instead of a temporary server
per CLI run), and the pair of simultaneous runs whose config-A run is also the kill test's reference."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.reliability.harness import SECRET_ENV, Run, cli_env, start_run


@dataclass
class PrefectServer:
    api_url: str
    home: Path  # its SQLite database and log: the secrets test reads them
    pid: int


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory) -> PrefectServer:
    """One real ``prefect server`` on 127.0.0.1 for the suite's CLI runs."""
    from scripts.servers import free_port, launch_prefect

    home = tmp_path_factory.mktemp("prefect-server")
    server = launch_prefect(free_port(), home, home / "server.log").wait(timeout=300)
    yield PrefectServer(f"{server.url}/api", home, server.proc.pid)
    server.stop()


@pytest.fixture(scope="session")
def prefect_api(prefect_server) -> str:
    return prefect_server.api_url


@dataclass
class ConcurrentPair:
    """Two runs that ran at once in one workspace: ``a`` has the reference config, ``b`` another."""

    a: Run
    b: Run
    rc: tuple[int, int]
    b_overrides: list[str]


B_OVERRIDES = ["name=sample-lr", "train.lr=0.001", "adapter.r=4"]


@pytest.fixture(scope="session")
def concurrent_pair(tmp_path_factory, prefect_api) -> ConcurrentPair:
    """Config A (the reference of the kill test) and config B (another lr and rank) start together in the
    same workdir, MLflow database and Prefect server: they share every curation stage, the tokenized data and
    the base model, and differ in training."""
    tmp = tmp_path_factory.mktemp("concurrent")
    workdir, uri = tmp / "work", f"sqlite:///{tmp / 'mlruns.db'}"
    env = cli_env(tmp, PREFECT_API_URL=prefect_api, **SECRET_ENV)
    a = start_run(tmp, workdir, uri, env=dict(env), log_name="a.log")
    b = start_run(tmp, workdir, uri, B_OVERRIDES, env=dict(env), log_name="b.log")
    rc = (a.wait(), b.wait())
    return ConcurrentPair(a, b, rc, B_OVERRIDES)
