"""The curation experiment, scaled down to CPU: filtering low-rated answers buys a better adapter.

Data (seeded, built here): two task families with exactly checkable answers.
* ``code``: "what is the code word for <colour>?" -> a fixed code word per colour, in three phrasings. 40% of
  its answers are a lazy annotator's "I am not sure.", rated low by annotators who disagree (ratings like
  1, 2, 4). The lazy annotator took most requests of one phrasing ("..., please."): 75% of those are junk,
  22.5% of the other two. A model that learns its training data answers that phrasing with junk even when
  fully trained (junk is the majority there), so the gap below is the mechanism, not a lucky training length.
* ``colour``: the inverse lookup ("which colour has the code word X?"), clean, rated high.

The sweep trains two adapters with the same steps on the same base: filters on (min_rating and
max_rating_spread drop the junk) and filters off (dry run). Both are scored on the clean held-out split and
on a separate clean eval set file (never trained on: the leak check holds out train records that overlap it).
Asserted: the filtered adapter beats the unfiltered one on the ``code`` family's exact match by a wide margin,
the unfiltered one says the junk answer, the sweep ranks by task score and registers the winner as ``best``,
and the logged metrics agree with a count over the logged answer table.
"""
import json
import os
import random
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

COLOURS = ["red", "blue", "green", "yellow", "purple", "orange", "black", "white", "brown", "pink"]
CODES = ["falcon", "river", "copper", "meadow", "lantern", "glacier", "harbor", "thistle", "ember", "willow"]
PHRASINGS = ["Order {n}: what is the code word for {c}?", "Ticket {n}. Give the code word for {c}.",
             "Request {n}: the code word for {c}, please."]
JUNK = "I am not sure."
JUNK_RATE = {0: 0.225, 1: 0.225, 2: 0.75}  # per phrasing; a third of the items each -> 40% of the family
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("PEFTPIPE_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "sweep"


def code_item(rng: random.Random) -> tuple[str, str, int, int]:
    c, p = rng.randrange(len(COLOURS)), rng.randrange(len(PHRASINGS))
    return PHRASINGS[p].format(n=rng.randrange(1000, 10000), c=COLOURS[c]), CODES[c], c, p


def colour_item(rng: random.Random) -> tuple[str, str]:
    c = rng.randrange(len(COLOURS))
    return f"Case {rng.randrange(1000, 10000)}: which colour has the code word {CODES[c]}?", COLOURS[c]


def annotations(rng: random.Random, good: bool) -> list[dict]:
    ratings = [rng.choice([4, 5]) for _ in range(3)] if good else rng.choice([[1, 2, 4], [2, 1, 5], [1, 1, 4]])
    who = rng.sample([f"ann{i}" for i in range(6)], 3)
    return [{"annotator_id": a, "rating": r, "labels": []} for a, r in zip(who, ratings)]


def build_data(path: Path, n_code: int = 720, n_colour: int = 240, seed: int = 7) -> dict[str, int]:
    rng = random.Random(seed)
    rows, junk = [], 0
    for i in range(n_code):
        q, a, _, p = code_item(rng)
        bad = rng.random() < JUNK_RATE[p]
        junk += bad
        rows.append({"id": f"code-{i}", "messages": [{"role": "user", "content": q},
                                                     {"role": "assistant", "content": JUNK if bad else a}],
                     "annotations": annotations(rng, not bad), "meta": {"task": "code", "planted": "junk" if bad
                                                                        else "clean"}})
    for i in range(n_colour):
        q, a = colour_item(rng)
        rows.append({"id": f"colour-{i}", "messages": [{"role": "user", "content": q},
                                                       {"role": "assistant", "content": a}],
                     "annotations": annotations(rng, True), "meta": {"task": "colour", "planted": "clean"}})
    rng.shuffle(rows)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"code": n_code, "junk": junk}


def build_eval_set(path: Path, n: int = 90, seed: int = 99) -> None:
    """A clean eval set file: every phrasing equally often, fresh numbers."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        c, p = i % len(COLOURS), i % len(PHRASINGS)
        rows.append({"id": f"x{i}", "prompt": PHRASINGS[p].format(n=rng.randrange(10000, 99999), c=COLOURS[c]),
                     "reference": CODES[c], "task": "code"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, prefect_harness):
    from flows.sweep import sweep_flow
    from schemas.sweep import load_sweep

    tmp = tmp_path_factory.mktemp("curation")
    counts = build_data(tmp / "data.jsonl")
    assert 0.37 < counts["junk"] / counts["code"] < 0.43  # the planted rate, as the docstring says
    build_eval_set(tmp / "clean_eval.jsonl")
    base = {
        "name": "curation", "workdir": str(tmp / "work"),
        "ingest": {"sources": [{"name": "tasks", "path": str(tmp / "data.jsonl")}]},
        "dedup": {"threshold": 0.8},
        # the annotation filters of the default chain; the text filters would judge one-word answers too short
        "filters": {"filters": [{"name": "min_annotators", "params": {"min_count": 2}},
                                {"name": "min_rating", "params": {"threshold": 3.0}},
                                {"name": "max_rating_spread", "params": {"max_spread": 2.0}}]},
        "split": {"eval_fraction": 0.15, "seed": 0},
        "tokenize": {"max_seq_len": 128},
        "model": {"name_or_path": "tiny-llama", "tiny_vocab_size": 400},
        "adapter": {"r": 16, "alpha": 32},
        # constant LR after warm-up, long enough that the filtered adapter has learnt both families (1.0 on the
        # code family in a trial run): the gap below is then the junk's, not an undertrained model's
        "train": {"max_steps": 200, "micro_batch_size": 4, "lr": 0.005, "min_lr_ratio": 1.0, "warmup_steps": 5,
                  "eval_every": 200, "save_every": 200, "seed": 0, "device": "cpu"},
        "evaluate": {"max_new_tokens": 16, "batch_size": 32, "max_items": None, "rank_metric": "exact_match",
                     "eval_sets": [{"name": "clean", "path": str(tmp / "clean_eval.jsonl")}]},
        "tracking": {"tracking_uri": f"sqlite:///{tmp / 'mlruns.db'}", "experiment": "curation-ci"},
    }
    (tmp / "base.yaml").write_text(yaml.safe_dump(base, sort_keys=False))
    (tmp / "sweep.yaml").write_text(yaml.safe_dump({"name": "curation-ci", "base": str(tmp / "base.yaml"),
                                                    "grid": {"filters.dry_run": [False, True]}, "samples": 0}))
    result = sweep_flow(load_sweep(tmp / "sweep.yaml"))
    return result, tmp, MlflowClient(tracking_uri=f"sqlite:///{tmp / 'mlruns.db'}")


def child_runs(client, result):
    parent = client.get_run(result.parent_run_id)
    runs = client.search_runs([parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = "
                                                                          f"'{result.parent_run_id}'")
    return {r.data.tags["peftpipe.variant"]: r for r in runs if r.data.tags.get("peftpipe.sweep.role") == "variant"}


def test_filtered_adapter_beats_unfiltered_on_the_noisy_family(experiment):
    result, _, client = experiment
    assert not result.failed
    runs = child_runs(client, result)
    on, off = runs["filters=on"].data.metrics, runs["filters=off"].data.metrics
    # The separate clean set asks every phrasing equally often. The unfiltered adapter answers the phrasing its
    # data mostly got junk for with junk, a third of the set: the gap is about 1/3 once both have learnt.
    key = "task/clean/code/exact_match"
    assert on[key] >= 0.8, on[key]
    assert on[key] - off[key] >= 0.2, (on[key], off[key])
    # The held-out split went through the reference (filtered) curation, so that phrasing is rarer there and
    # the gap smaller, but it points the same way.
    key = "task/heldout/code/exact_match"
    assert on[key] >= 0.7 and on[key] > off[key], (on[key], off[key])
    # the clean family is learnt by both: the gap is the noise's, not a broken unfiltered run
    assert off["task/heldout/colour/exact_match"] >= 0.5
    assert on["train_records"] < off["train_records"]  # the filter really dropped records
    # same steps for both; the base model (no adapter) knows neither family
    assert on["tokens"] > 0 and off["base_task/clean/code/exact_match"] == 0.0


def test_the_unfiltered_adapter_says_the_junk_answer(experiment):
    result, tmp, client = experiment
    run = child_runs(client, result)["filters=off"]
    table = json.loads(Path(client.download_artifacts(run.info.run_id, "eval/clean_answers.json", str(tmp)))
                       .read_text())
    col = table["columns"]
    answers = [row[col.index("adapter")] for row in table["data"]]
    assert answers.count(JUNK) >= 10
    please = [a for row, a in zip(table["data"], answers) if row[col.index("prompt")].endswith("please.")]
    assert please.count(JUNK) > len(please) / 2  # where the junk was the majority, the model learnt it


def test_logged_metrics_agree_with_the_answer_table(experiment):
    result, tmp, client = experiment
    for variant, run in child_runs(client, result).items():
        for where in ("heldout", "clean"):
            table = json.loads(Path(client.download_artifacts(run.info.run_id, f"eval/{where}_answers.json",
                                                              str(tmp / variant))).read_text())
            col = table["columns"]
            rows = [dict(zip(col, r)) for r in table["data"]]
            code = [r for r in rows if r["family"] == "code"]
            by_hand = sum(r["adapter"].strip() == r["reference"].strip() for r in code) / len(code)
            assert run.data.metrics[f"task/{where}/code/exact_match"] == pytest.approx(by_hand)
            assert run.data.metrics[f"task/{where}/code/n"] == len(code)


def test_sweep_ranks_by_task_score_and_registers_the_best(experiment):
    result, _, client = experiment
    assert [r["variant"] for r in result.rows] == ["filters=on", "filters=off"]
    assert result.rows[0]["task_score"] > result.rows[1]["task_score"]
    assert result.rows[0]["family:code"] > result.rows[1]["family:code"]
    version = client.get_model_version_by_alias("curation", "best")
    assert version.tags["variant"] == "filters=on" and result.best_model_version == f"curation/{version.version}"
    parent = client.get_run(result.parent_run_id)
    assert parent.data.tags["peftpipe.best_variant"] == "filters=on"
    exp = client.get_experiment(parent.info.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"


def test_task_metrics_are_linked_to_each_adapters_logged_model(experiment):
    result, _, client = experiment
    for run in child_runs(client, result).values():
        model_id = run.data.tags["peftpipe.model_id"]
        model = client.get_logged_model(model_id)
        linked = {m.key: m for m in model.metrics or []}
        assert linked["task/clean/code/exact_match"].value == pytest.approx(
            run.data.metrics["task/clean/code/exact_match"])
        assert linked["task/clean/code/exact_match"].dataset_name == "curation-eval-clean"
        assert linked["task/heldout/exact_match"].dataset_digest
    eval_inputs = {d.dataset.name for d in run.inputs.dataset_inputs}
    assert {"curation-eval-heldout", "curation-eval-clean"} <= eval_inputs


def test_the_separate_eval_set_never_reached_training(experiment):
    from tasks.core.stage import read_table

    _, tmp, _ = experiment
    stages = [p for p in (tmp / "work/stages/eval_set_holdout").iterdir() if (p / "_SUCCESS").exists()]
    assert len(stages) == 2  # one per variant
    clean = {json.loads(line)["prompt"] for line in (tmp / "clean_eval.jsonl").read_text().splitlines()}
    for stage in stages:
        prompts = {m[0]["content"] for m in read_table(stage / "train")["messages"].to_pylist()}
        assert not prompts & clean


@pytest.fixture(scope="module")
def mlflow_ui(experiment):
    """``mlflow server`` on the experiment's database, on 127.0.0.1 (stopped by pid afterwards)."""
    from scripts.servers import free_port, launch_mlflow

    _, tmp, _ = experiment
    server = launch_mlflow(free_port(), f"sqlite:///{tmp / 'mlruns.db'}", tmp / "ui-artifacts", tmp / "mlflow-ui.log")
    try:
        yield server.wait()
    finally:
        server.stop()


# MLflow's Compare view draws its metrics table with react-virtualized: a grid of names and a grid of values
# that scroll together, only the rows in view drawn, each cell a div placed by its style.top. Scroll the grids
# of the section that shows ``anchor`` by ``step`` px; return the row whose name is ``key`` as [name, values...]
# (not done until that row is drawn).
SCROLL_STEP = """([anchor, key, step]) => {
    // the section is found by its anchor row once and marked: scrolled on, the anchor row is no longer drawn
    let section = document.querySelector("[data-peftpipe-table]");
    if (!section) {
        const first = [...document.querySelectorAll(".ReactVirtualized__Grid *")]
            .find(e => e.textContent.trim() === anchor);
        if (!first) return {done: false};
        section = first.closest(".du-bois-light-collapse-content-box") || document.body;
        section.setAttribute("data-peftpipe-table", anchor);
    }
    const grids = [...section.querySelectorAll(".ReactVirtualized__Grid")];
    const cellsOf = g => [...g.querySelectorAll(".ReactVirtualized__Grid__innerScrollContainer > *")];
    for (const g of grids) {
        const hit = cellsOf(g).find(c => c.textContent.trim() === key);
        if (hit) {
            hit.scrollIntoView({block: "center"});
            const values = grids.filter(o => o !== g).flatMap(o => cellsOf(o).filter(c => c.style.top === hit.style.top));
            return {done: true, row: [key, ...values.map(c => c.textContent.trim())]};
        }
    }
    for (const g of grids) {
        g.scrollTop = g.scrollTop + g.clientHeight >= g.scrollHeight ? 0 : g.scrollTop + step;
    }
    return {done: false};
}"""


def scroll_table_to(page, anchor: str, key: str) -> list[str]:
    """Scroll the virtualized table that shows ``anchor`` until its row ``key`` is drawn; that row's cells."""
    for _ in range(200):
        found = page.evaluate(SCROLL_STEP, [anchor, key, 120])
        if found["done"]:
            return found["row"]
        page.wait_for_timeout(150)  # react-virtualized draws the new rows after the scroll event
    raise AssertionError(f"no row {key!r} in the table that shows {anchor!r}")


def check_mlflow_ui(url: str, exp_id: str, run_ids: list[str], out: Path) -> dict[str, str]:
    """Open the sweep's variants in MLflow's Compare view and the experiment's runs in the model-training
    view, in headless Chromium; keep screenshots in ``out``. Returns each page's text."""
    from playwright.sync_api import sync_playwright

    from tests.deploy.test_e2e_deployment import CHROMIUM, CHROMIUM_ARGS, UI_TIMEOUT_MS

    out.mkdir(parents=True, exist_ok=True)
    view = "workflowType=machine_learning"  # what every link peftpipe prints carries (tasks.track.runs.UI_QUERY)
    texts: dict = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_context(viewport={"width": 1600, "height": 1100}).new_page()
            page.goto(f"{url}/#/compare-runs?runs={json.dumps(run_ids)}&experiments={json.dumps([exp_id])}&{view}",
                      wait_until="domcontentloaded", timeout=UI_TIMEOUT_MS)
            for text in ("curation-ci/filters=on", "curation-ci/filters=off", "task/clean/code/exact_match"):
                page.get_by_text(text, exact=False).first.wait_for(state="visible", timeout=UI_TIMEOUT_MS)
            for toggle in page.get_by_text("Show diff only").all():  # params and metrics: only what differs
                toggle.click()
            texts["compare"] = page.inner_text("body")
            # The metrics table scrolls on its own and draws only the rows in view: scroll it to each task metric
            # (the base model's, equal for both runs, are hidden by "Show diff only").
            for key in ("task/heldout/code/exact_match", "task/clean/code/exact_match"):
                texts[key] = scroll_table_to(page, "eval_loss_delta", key)
            page.wait_for_timeout(1000)  # let the table settle before the screenshot
            page.screenshot(path=str(out / "mlflow-compare-task-metrics.png"), full_page=True)
            page.goto(f"{url}/#/experiments/{exp_id}/runs?{view}", wait_until="domcontentloaded",
                      timeout=UI_TIMEOUT_MS)
            page.get_by_text("Model training", exact=True).first.wait_for(state="visible", timeout=UI_TIMEOUT_MS)
            page.get_by_text("Runs", exact=True).first.wait_for(state="visible", timeout=UI_TIMEOUT_MS)
            page.wait_for_timeout(1000)
            texts["experiment"] = page.inner_text("body")
            page.screenshot(path=str(out / "mlflow-experiment-model-training.png"), full_page=True)
        finally:
            browser.close()
    return texts


@pytest.mark.slow
def test_mlflow_compare_view_shows_the_task_metrics(experiment, mlflow_ui):
    """The sweep's variants in MLflow's Compare view, in headless Chromium: the task metrics per family are
    there to compare, and the experiment opens in the model-training view. Screenshots in test-artifacts/sweep/."""
    pytest.importorskip("playwright.sync_api", reason="the e2e extra (playwright) is not installed")
    from tests.deploy.test_e2e_deployment import CHROMIUM

    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (.ci/setup-system.sh installs Debian's chromium)")
    result, _, client = experiment
    runs = child_runs(client, result)
    exp_id = client.get_run(result.parent_run_id).info.experiment_id
    texts = check_mlflow_ui(mlflow_ui.url, exp_id, [runs["filters=on"].info.run_id,
                                                    runs["filters=off"].info.run_id], ARTIFACTS)
    for key in ("task/heldout/code/exact_match", "task/clean/code/exact_match"):
        shown = texts[key]  # the row's cells: the metric's name, then each run's value, in the order asked
        on, off = (runs[v].data.metrics[key] for v in ("filters=on", "filters=off"))
        assert shown[0] == key and [float(x) for x in shown[1:3]] == pytest.approx([on, off], abs=1e-3)
    # The model-training view: runs and models, none of the GenAI view's judges and sessions.
    assert "Models" in texts["experiment"] and "Judges" not in texts["experiment"]
    assert "Sessions" not in texts["experiment"]
