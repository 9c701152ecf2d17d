"""The deployment entry flows check their servers and workdir before any stage, as the CLI does; a config
parameter's tracking password never reaches the Prefect API (what the UI shows) or the flow run's logs.
Real flows against a real temporary Prefect server; the MLflow URL points at a port nobody listens on."""
import socket
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterParentFlowRunId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.logging.handlers import APILogHandler

from flows import deployments
from schemas.pipeline import load_config

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "hunter22-not-for-the-ui"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


@pytest.fixture
def unreachable_mlflow(monkeypatch) -> str:
    monkeypatch.setenv("PEFTPIPE_PREFLIGHT_ATTEMPTS", "1")
    return f"http://127.0.0.1:{closed_port()}"


def _flow_run_record(flow_run_id):
    APILogHandler().flush()  # the run's logs reach the API in batches: send what is queued, and wait for it
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [flow_run_id]}))
        children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])))
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return run, tasks, children, logs


@pytest.mark.parametrize("entry", ["curate_deployment", "train_deployment", "pipeline_deployment"])
def test_entry_flow_fails_before_any_stage_when_mlflow_is_unreachable(entry, tmp_path, unreachable_mlflow,
                                                                      prefect_harness):
    workdir = tmp_path / "work"
    overrides = [f"workdir={workdir}", f"tracking.tracking_uri={unreachable_mlflow}"]
    state = getattr(deployments, entry)(config=str(ROOT / "configs/sample.yaml"), overrides=overrides,
                                        return_state=True)
    assert state.is_failed()
    message = str(state.message) + repr(state.result(raise_on_failure=False))
    assert f"MLflow tracking server at {unreachable_mlflow}/health cannot be reached" in message, message
    _, tasks, children, _ = _flow_run_record(state.state_details.flow_run_id)
    assert tasks == [] and children == []  # no stage, no subflow started
    assert not (workdir / "stages").exists() and not (workdir / "models").exists()


def test_a_config_parameter_keeps_its_password_out_of_the_api_and_logs(tmp_path, unreachable_mlflow,
                                                                      prefect_harness):
    uri = unreachable_mlflow.replace("http://", f"http://peftpipe:{PASSWORD}@")
    cfg = load_config(ROOT / "configs/sample.yaml", [f"workdir={tmp_path / 'work'}", f"tracking.tracking_uri={uri}"])
    state = deployments.pipeline_deployment(cfg=cfg, return_state=True)
    assert state.is_failed()
    run, tasks, _, logs = _flow_run_record(state.state_details.flow_run_id)
    assert tasks == []
    # What the Prefect UI shows of this run: its parameters and its logs, with the password masked.
    assert run.parameters["cfg"]["tracking"]["tracking_uri"] == uri.replace(PASSWORD, "***")
    assert PASSWORD not in str(run.parameters)
    assert logs and not any(PASSWORD in log.message for log in logs)
    assert any("peftpipe:***@127.0.0.1" in log.message for log in logs)  # the failure is logged, masked
    assert cfg.tracking.tracking_uri == uri  # the run itself has the real URI
    assert PASSWORD in cfg.model_dump_json(context={"include_secrets": True})  # and can hand it on
