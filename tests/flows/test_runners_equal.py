"""The `curate` flow, and tokenize after it, on the local, process-pool and Ray runners: the same files.

Every stage's output (data, rejects, maps, reports) must be the same bytes whichever runner ran its shard
tasks, and its ledger the same counts; only wall-time figures may differ. The work is cut by the stages'
own settings (ingest: a part per file or run of small files, and two byte ranges of the big one; several
dedup units, one filter task per shard, one tokenize task per shard), so each runner really gets several
tasks per stage.
"""
import gzip
import json
from pathlib import Path

import pytest
from prefect import flow

from flows.curate import curate_flow
from flows.runners import on_runner, worker_api_url
from schemas.pipeline import PipelineConfig, load_config
from tasks.core.stage import StageOutput
from tasks.tokenize.stage import tokenize_task
from tasks.tokenize.tokenizer import train_sample_tokenizer

ROOT = Path(__file__).resolve().parents[2]
RUNNERS = ("local", "processes", "ray")
# Ledger figures that measure time, not data: the only bytes allowed to differ between runners.
TIMINGS = {"seconds", "tokens_per_s"}
pytestmark = pytest.mark.slow  # three curations and three tokenizations, one Ray instance: minutes on 2 cores


@flow(name="tokenize-on-runner")
def tokenize_flow(split: StageOutput, tokenizer_dir: str, cfg: PipelineConfig) -> StageOutput:
    """The train flow's tokenize stage alone, on the flow's task runner (training would add minutes)."""
    with worker_api_url(cfg.runner):
        return tokenize_task(split, tokenizer_dir, cfg)


def source_dir(tmp: Path) -> Path:
    """The sample (1.1 MB: split into two byte ranges) beside a gzipped file (a part of its own) and two small
    files (one shared part), all cut from the sample: their ids come first in listing order, so the sample's
    own copies of those rows are quarantined as duplicate_id, across parts written by different tasks."""
    src = tmp / "source"
    src.mkdir()
    sample = (ROOT / "data/sample.jsonl").read_bytes()
    rows = sample.splitlines(keepends=True)
    (src / "extra-a.jsonl.gz").write_bytes(gzip.compress(b"".join(rows[:60]), mtime=0))
    (src / "extra-b.jsonl").write_bytes(b"".join(rows[60:90]))
    (src / "extra-c.jsonl").write_bytes(b"".join(rows[90:100]))
    (src / "sample.jsonl").write_bytes(sample)
    return src


def config(tmp: Path, kind: str) -> PipelineConfig:
    return load_config(ROOT / "configs/sample.yaml", [
        f"workdir={tmp / kind}", f"tracking.tracking_uri=sqlite:///{tmp / kind / 'mlruns.db'}",
        f"ingest.sources.0.path={tmp / 'source'}",
        "ingest.workers=2", "ingest.parallel_min_bytes=100000",  # the sample (1.1 MB) in two byte ranges
        "dedup.unit_rows=500", "filters.workers=2", "tokenize.batch_size=300",  # several dedup units and shards
        f"runner.kind={kind}", "runner.workers=2"])


@pytest.fixture(scope="module")
def runs(tmp_path_factory, prefect_harness, ray_session):
    tmp = tmp_path_factory.mktemp("runners")
    source_dir(tmp)
    texts = (ROOT / "data/sample.jsonl").read_bytes().decode(errors="replace").splitlines()[:400]
    tok_dir = str(train_sample_tokenizer(texts, tmp / "tok", vocab_size=600))
    out = {}
    for kind in RUNNERS:
        cfg = config(tmp, kind)
        state = on_runner(curate_flow, cfg.runner)(cfg, return_state=True)
        curated = state.result()
        tok_state = on_runner(tokenize_flow, cfg.runner)(curated.split, tok_dir, cfg, return_state=True)
        out[kind] = (cfg, [*curated.stages, tok_state.result()],
                     shard_task_runs(state.state_details.flow_run_id, tok_state.state_details.flow_run_id))
    return out


def shard_task_runs(*flow_run_ids) -> dict[str, int]:
    """Completed shard tasks of the flow runs, counted per stage (``STAGE-shard``)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        TaskRunFilter,
        TaskRunFilterName,
    )

    runs: list = []
    with get_client(sync_client=True) as client:
        while page := client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(flow_run_ids))),
                task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="-shard-")), limit=200,
                offset=len(runs)):
            runs += page
    counts: dict[str, int] = {}
    for run in runs:
        if run.name.rsplit("-", 1)[0].endswith("-shard") and run.state is not None and run.state.is_completed():
            stage = run.name.rsplit("-", 1)[0].removesuffix("-shard")
            counts[stage] = counts.get(stage, 0) + 1
    return counts


def without_timings(value):
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k not in TIMINGS}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def files_of(stage: StageOutput) -> dict[str, bytes]:
    return {p.relative_to(stage.path).as_posix(): p.read_bytes() for p in sorted(stage.path.rglob("*"))
            if p.is_file() and p.name != "stats.json"}


def test_every_runner_ran_every_stage_with_the_same_keys(runs):
    names = {kind: [(s.name, s.key) for s in stages] for kind, (_, stages, _) in runs.items()}
    assert [n for n, _ in names["local"]] == ["ingest", "exact_dedup", "near_dedup", "filter", "split", "tokenize"]
    assert names["processes"] == names["local"] and names["ray"] == names["local"]
    for kind, (cfg, stages, _) in runs.items():
        assert all(str(s.path).startswith(str(cfg.workdir)) for s in stages), kind


@pytest.mark.parametrize("kind", ["processes", "ray"])
def test_outputs_are_the_same_bytes_as_local(runs, kind):
    for local, other in zip(runs["local"][1], runs[kind][1], strict=True):
        want, got = files_of(local), files_of(other)
        assert sorted(got) == sorted(want), f"{kind}: {local.name} has other files"
        differ = [name for name in want if got[name] != want[name]]
        assert not differ, f"{kind}: {local.name}: {differ} differ from the local runner's"
        assert len(want) > 2, f"{local.name}: no data files to compare"


@pytest.mark.parametrize("kind", ["processes", "ray"])
def test_ledgers_are_the_same_but_for_timings(runs, kind):
    for local, other in zip(runs["local"][1], runs[kind][1], strict=True):
        a = json.loads((local.path / "stats.json").read_text())
        b = json.loads((other.path / "stats.json").read_text())
        assert without_timings(b) == without_timings(a), f"{kind}: {local.name}"
        led = other.ledger
        assert led.n_in == led.kept + sum(led.dropped.values())


@pytest.mark.parametrize("kind", ["processes", "ray"])
def test_every_stage_sent_its_shards_to_the_runner(runs, kind):
    tasks = runs[kind][2]
    assert set(tasks) == {"ingest", "exact_dedup", "near_dedup", "filter", "tokenize"}, tasks
    assert tasks["ingest"] == 4  # the gzipped file, the two small ones, the sample's two byte ranges
    assert tasks["filter"] == len(list(runs[kind][1][2].data().glob("*.parquet")))  # one per input shard
    assert tasks["tokenize"] == 2  # the train and the eval shard
    assert runs["local"][2] == {}  # local: the stages' own loops and pools, no shard tasks


def test_the_work_was_split_into_several_shard_tasks(runs):
    cfg, stages, _ = runs["local"]
    by_name = {s.name: s for s in stages}
    ingested = by_name["ingest"].ledger
    assert len(ingested.extra["sources"][0]["files"]) == 4 and ingested.dropped["duplicate_id"] == 1 + 100  # planted + copied
    assert len(list(by_name["ingest"].data().glob("part-000-00003-0000[01]-*.parquet"))) == 2  # two byte ranges
    assert len(list(by_name["near_dedup"].data().glob("*.parquet"))) >= 3  # several dedup units
    assert by_name["near_dedup"].ledger.dropped  # the sample has near-duplicates: the mapped steps found them
