"""End to end, as a user deploys it: both servers, the work pools and a worker, `prefect deploy --all` from
prefect.yaml, the pipeline deployment run with parameter overrides on the sample, the new-dataset trigger,
and both UIs opened in headless Chromium, with screenshots kept in test-artifacts/deploy/.
"""
import json
import os
import shutil
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from flows.deployments import DATASET_EVENT
from scripts.stack import Stack

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("PEFTPIPE_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "deploy"
CHROMIUM = os.environ.get("PEFTPIPE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]
UI_TIMEOUT_MS = 90_000  # the UIs load slowly on a busy 2-core machine

# The module's fixtures start servers (and, here, run the pipeline) inside the first test's time budget.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    directory = tmp_path_factory.mktemp("stack")
    st = Stack(directory)
    try:
        st.start()
        st.deploy()
        yield st
    finally:
        st.stop()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        for log in directory.glob("*.log"):  # the servers' and worker's logs, for when something failed
            shutil.copy(log, ARTIFACTS / log.name)
        (ARTIFACTS / "timings.json").write_text(json.dumps(st.timings, indent=2) + "\n")


@pytest.fixture(scope="module")
def overrides(stack):
    return [f"workdir={stack.dir / 'work'}", f"tracking.tracking_uri={stack.mlflow.url}", "tracking.run_name=e2e",
            "train.max_steps=6", "train.eval_every=3", "train.save_every=3"]


@pytest.fixture(scope="module")
def pipeline_run(stack, overrides):
    return stack.api("GET", f"/flow_runs/{stack.run_deployment('peftpipe-pipeline/pipeline', overrides)}")


@pytest.fixture(scope="module")
def mlflow_run(stack, pipeline_run):
    # MLflow resolves logged-model artifacts through the default tracking URI, whatever the client's: without
    # this it would create ./mlflow.db and look there.
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(stack.mlflow.url)
    try:
        client = MlflowClient(tracking_uri=stack.mlflow.url)
        (run,) = client.search_runs([client.get_experiment_by_name("peftpipe").experiment_id],
                                    filter_string="tags.`peftpipe.flow` = 'pipeline'")
        yield client, run
    finally:
        mlflow.set_tracking_uri(previous)


def flow_names(stack) -> dict[str, list[dict]]:
    names = {f["id"]: f["name"] for f in stack.api("POST", "/flows/filter", {})}
    runs: dict[str, list[dict]] = {}
    for r in stack.flow_runs():
        runs.setdefault(names[r["flow_id"]], []).append(r)
    return runs


def test_pipeline_deployment_runs_on_the_worker_with_overrides(stack, pipeline_run, overrides):
    assert pipeline_run["state_type"] == "COMPLETED", pipeline_run["state"]
    assert pipeline_run["parameters"] == {"config": "configs/sample.yaml", "overrides": overrides,
                                            "runner": None, "ray_address": None}  # the deployments' runner defaults
    runs = flow_names(stack)
    # The entry flow ran curate and train as subflows of itself, all completed.
    for name in ("curate", "train"):
        (sub,) = runs[name]
        assert sub["state_type"] == "COMPLETED"
        assert sub["parent_task_run_id"] is not None
    # Every stage's output is in the overridden workdir, not the repository's.
    assert {p.name for p in (stack.dir / "work" / "stages").iterdir()} >= {"ingest", "near_dedup", "filter", "split"}


def test_prefect_holds_the_ledger_reports_and_mlflow_link(stack, pipeline_run, mlflow_run):
    _, run = mlflow_run
    artifacts = stack.api("POST", "/artifacts/filter", {"limit": 200})
    by_key = {a["key"]: a for a in artifacts if a["key"]}
    ledger = by_key["curation-ledger"]
    assert ledger["type"] == "table"
    rows = json.loads(ledger["data"]) if isinstance(ledger["data"], str) else ledger["data"]
    assert {"ingest", "exact_dedup", "near_dedup", "filter", "split"} <= {r["stage"] for r in rows}
    link = by_key["mlflow-run"]
    assert link["type"] == "markdown" or link["type"] == "link"
    assert stack.mlflow.url in link["data"] and run.info.run_id in link["data"]
    types = {a["type"] for a in artifacts}
    assert "markdown" in types  # the dedup and filter reports
    assert any("dedup" in k for k in by_key) and any("filter" in k for k in by_key), sorted(by_key)


def test_mlflow_run_has_the_metrics_and_adapter(stack, mlflow_run):
    client, run = mlflow_run
    assert run.info.status == "FINISHED"
    assert run.data.params["train.max_steps"] == "6"  # the deployment parameter overrides reached the run
    assert run.data.metrics["near_dedup.dropped.near_duplicate"] > 0
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) >= 5
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "adapter")}
    assert "adapter/adapter_model.safetensors" in artifacts  # served through the MLflow server's proxy


def test_new_dataset_digest_triggers_training_on_the_gpu_pool(stack, pipeline_run, overrides):
    curate = stack.api("GET", f"/flow_runs/{stack.run_deployment('peftpipe-curate/curate', overrides)}")
    assert curate["state_type"] == "COMPLETED"
    train = stack.api("GET", "/deployments/name/peftpipe-train/train")
    (automation,) = [a for a in stack.api("POST", "/automations/filter", {}) if a["name"] == "train-on-new-dataset"]
    assert automation["trigger"]["expect"] == [DATASET_EVENT]

    def triggered():
        return stack.flow_runs(deployment_id={"any_": [train["id"]]})
    (run,) = stack.wait_for(triggered, timeout=120)
    # Nobody serves the GPU pool in this test, so the triggered run waits there with the curated config.
    assert run["state_type"] in ("SCHEDULED", "PENDING")
    assert run["parameters"] == {"config": "configs/sample.yaml", "overrides": overrides,
                                            "runner": None, "ray_address": None}  # the deployments' runner defaults
    assert run["work_queue_name"] == "default"
    stack.api("DELETE", f"/flow_runs/{run['id']}")


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api", reason="the e2e extra (playwright) is not installed")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (.ci/setup-system.sh installs Debian's chromium)")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


def open_page(browser, url: str, expect: list[str], shot: str, search: tuple[str, str] | None = None) -> str:
    """Open ``url``, wait until every text in ``expect`` shows, keep a screenshot (also when it fails).

    ``search`` = (placeholder, text) types into a search box first (MLflow's metric table is paginated).
    No wait for network idle: both UIs poll their APIs forever.
    """
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    page = context.new_page()
    try:
        page.goto(url, wait_until="domcontentloaded", timeout=UI_TIMEOUT_MS)
        if search:
            box = page.get_by_placeholder(search[0])
            box.wait_for(timeout=UI_TIMEOUT_MS)
            box.fill(search[1])
        for text in expect:
            page.get_by_text(text, exact=False).first.wait_for(state="visible", timeout=UI_TIMEOUT_MS)
        page.wait_for_timeout(1000)  # let charts and tables finish drawing before the screenshot
        return page.inner_text("body")
    finally:
        page.screenshot(path=str(ARTIFACTS / f"{shot}.png"), full_page=True)
        context.close()


def test_prefect_ui_shows_the_flow_run_and_its_artifacts(stack, pipeline_run, browser):
    ui = stack.prefect.url
    text = open_page(browser, f"{ui}/runs/flow-run/{pipeline_run['id']}", [pipeline_run["name"], "Completed"],
                     "prefect-flow-run")
    assert "peftpipe-pipeline" in text and "peftpipe-cpu" in text
    text = open_page(browser, f"{ui}/artifacts", ["curation-ledger", "mlflow-run", "near-dedup-report"],
                     "prefect-artifacts")
    assert "filter-report" in text
    artifacts = {a["key"]: a for a in stack.api("POST", "/artifacts/filter", {"limit": 200}) if a["key"]}
    text = open_page(browser, f"{ui}/artifacts/artifact/{artifacts['curation-ledger']['id']}",
                     ["near_dedup", "dropped: near_duplicate"], "prefect-curation-ledger")
    assert "exact_duplicate" in text
    open_page(browser, f"{ui}/artifacts/artifact/{artifacts['mlflow-run']['id']}", ["MLflow run"], "prefect-mlflow-link")
    # The ad hoc run form of the pipeline deployment: config file, overrides and the PipelineConfig form.
    deployment = stack.api("GET", "/deployments/name/peftpipe-pipeline/pipeline")
    text = open_page(browser, f"{ui}/deployments/deployment/{deployment['id']}/run", ["overrides", "cfg"],
                     "prefect-run-form")
    assert "PipelineConfig" in text


def test_mlflow_ui_shows_the_run_and_its_metrics(stack, mlflow_run, browser):
    _, run = mlflow_run
    base = f"{stack.mlflow.url}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    text = open_page(browser, base, ["e2e", "Finished", "train_loss"], "mlflow-run",
                     search=("Search metrics", "loss"))
    assert "eval_loss" in text
    open_page(browser, f"{base}/model-metrics", ["train_loss", "eval_loss"], "mlflow-metrics",
              search=("Search metric charts", "loss"))
