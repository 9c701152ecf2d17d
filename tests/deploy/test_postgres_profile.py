"""The production profile: Prefect server and MLflow server both on PostgreSQL (a throwaway local cluster on a
free port), exercised through their APIs and checked in the databases themselves."""
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from mlflow import MlflowClient

from scripts.postgres import LocalPostgres, PostgresError, find_bin_dir
from scripts.servers import CPU_POOL, GPU_LIMIT, GPU_POOL, QUIET_ENV, free_port
from scripts.stack import Stack

ROOT = Path(__file__).resolve().parents[2]
# The module's fixtures start servers (and, here, run the pipeline) inside the first test's time budget.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

# A flow run against the PostgreSQL-backed server: a table artifact and the new-dataset variable.
FLOW = """
from prefect import flow
from flows.deployments import announce_dataset
from tasks.track.artifacts import publish_table

@flow(name="pg-smoke")
def smoke():
    publish_table("pg-ledger", [{"stage": "ingest", "outcome": "kept", "records": 3}])
    return announce_dataset("pg", {"train": "t", "eval": "e"}, "configs/sample.yaml", [])

assert smoke() is True
"""


@pytest.fixture(scope="module")
def postgres():
    pytest.importorskip("psycopg2", reason="MLflow on PostgreSQL needs psycopg2-binary (the e2e extra)")
    if find_bin_dir() is None:
        pytest.skip("PostgreSQL binaries not found; .ci/setup-system.sh installs Debian's postgresql")
    directory = Path(tempfile.mkdtemp(prefix="peftpipe-pg-"))  # not under pytest's 0700 tmp: postgres must reach it
    try:
        pg = LocalPostgres(directory, free_port()).start()
    except PostgresError as exc:
        shutil.rmtree(directory, ignore_errors=True)
        pytest.skip(f"cannot start PostgreSQL here: {exc}")
    try:
        yield pg
    finally:
        pg.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def stack(postgres, tmp_path_factory):
    st = Stack(tmp_path_factory.mktemp("pg-stack"), postgres=postgres.url)
    try:
        yield st.start(worker=False)
    finally:
        st.stop()


def test_prefect_server_keeps_pools_runs_and_artifacts_in_postgres(stack, postgres):
    env = {**os.environ, **QUIET_ENV, "PREFECT_API_URL": stack.api_url, "PREFECT_HOME": str(stack.home)}
    res = subprocess.run([sys.executable, "-c", FLOW], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]

    def sql(query: str) -> str:
        return postgres.psql(query, "prefect").strip()
    assert sql("SELECT name FROM work_pool ORDER BY name").split() == sorted([CPU_POOL, GPU_POOL])
    assert sql(f"SELECT \"limit\" FROM concurrency_limit_v2 WHERE name = '{GPU_LIMIT}'") == "1"
    assert sql("SELECT state_type FROM flow_run JOIN flow ON flow.id = flow_run.flow_id "
               "WHERE flow.name = 'pg-smoke'") == "COMPLETED"
    assert sql("SELECT type FROM artifact WHERE key = 'pg-ledger'") == "table"
    assert sql("SELECT count(*) FROM variable WHERE name = 'peftpipe-dataset-pg'") == "1"
    # Nothing went to a SQLite file on the side.
    assert not list(stack.home.glob("*.db"))


def test_mlflow_server_keeps_runs_and_metrics_in_postgres(stack, postgres):
    client = MlflowClient(tracking_uri=stack.mlflow.url)
    experiment = client.create_experiment("pg-profile")
    run = client.create_run(experiment, run_name="pg")
    for step, loss in enumerate([2.0, 1.5, 1.2]):
        client.log_metric(run.info.run_id, "train_loss", loss, step=step)
    client.log_param(run.info.run_id, "dedup.threshold", "0.8")
    client.set_terminated(run.info.run_id)
    assert [m.value for m in client.get_metric_history(run.info.run_id, "train_loss")] == [2.0, 1.5, 1.2]
    rows = postgres.psql(f"SELECT step, value FROM metrics WHERE run_uuid = '{run.info.run_id}' ORDER BY step",
                         "mlflow").split()
    assert rows == ["0|2", "1|1.5", "2|1.2"]
    assert postgres.psql(f"SELECT status FROM runs WHERE run_uuid = '{run.info.run_id}'", "mlflow").strip() == "FINISHED"
    assert not (stack.dir / "mlflow.db").exists()
