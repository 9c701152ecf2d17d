"""The experiment's data: deterministic, verifiable answers, and each planted problem caught by its own filter."""
from __future__ import annotations

import importlib.util
import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from schemas.filters import FilterConfig
from schemas.record import RECORD_SCHEMA
from tasks.filters.apply import run_chain
from tasks.filters.base import FilterBatch
from tasks.filters.chain import build_chain

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("make_experiment", ROOT / "data" / "make_experiment.py")
mx = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mx)


@pytest.fixture(scope="module")
def data():
    return mx.build(per_task=150, eval_per_task=20)


def test_deterministic_files_and_unique_ids(tmp_path):
    a = mx.write(tmp_path / "a", per_task=40, eval_per_task=5)
    b = mx.write(tmp_path / "b", per_task=40, eval_per_task=5)
    assert a["sha256"] == b["sha256"]
    ids = [json.loads(line)["id"] for line in (tmp_path / "a" / "train.jsonl").read_text().splitlines()]
    assert len(ids) == len(set(ids)) == a["train_records"]


def test_answers_are_verifiable_and_wrong_ones_fail(data):
    records, evals = data
    for e in evals:
        assert mx.solve(e["task"], e["prompt"]) == e["reference"]
    by_id = {r["id"]: r for r in records}
    for r in records:
        prompt, answer = r["messages"][0]["content"], r["messages"][1]["content"]
        m = r["meta"]
        junk = m["planted"] == "junk" or m.get("of_planted") == "junk"
        if m["planted"] == "near_dup":  # a reworded prompt: its answer is its original's
            assert answer == by_id[m["of"]]["messages"][1]["content"]
            continue
        assert (mx.solve(m["task"], prompt) == answer) == (not m["wrong"] and not junk), r


def test_eval_set_never_seen_in_training(data):
    records, evals = data
    train_prompts = {r["messages"][0]["content"].lower() for r in records}
    assert not train_prompts & {e["prompt"].lower() for e in evals}
    # arithmetic operands are split between the two sides, so no eval sum is a train sum in other words
    pairs = lambda prompts: {tuple(sorted(map(int, __import__("re").findall(r"\d+", p)))) for p in prompts}  # noqa: E731
    train_sums = pairs(r["messages"][0]["content"] for r in records if r["meta"]["task"] == "arithmetic")
    assert not train_sums & pairs(e["prompt"] for e in evals if e["task"] == "arithmetic")


def test_planted_rates(data):
    records, _ = data
    base = [r for r in records if r["meta"]["planted"] not in ("exact_dup", "near_dup")]
    for task, rate in mx.WRONG.items():
        ordinary = [r for r in base if r["meta"]["task"] == task and r["meta"]["planted"] not in ("junk", "single")]
        share = sum(r["meta"]["wrong"] for r in ordinary) / len(ordinary)
        assert share == pytest.approx(rate, abs=0.01)
    copies = Counter(r["meta"]["of_planted"] for r in records if "of_planted" in r["meta"])
    junk_copy_rate = copies["junk"] / sum(r["meta"]["planted"] == "junk" for r in base)
    other_copy_rate = (sum(copies.values()) - copies["junk"]) / sum(r["meta"]["planted"] != "junk" for r in base)
    assert junk_copy_rate > 3 * other_copy_rate  # spam is copied far more often than the rest


def test_each_planted_problem_is_caught_by_its_own_filter(data):
    """The experiment's filter chain (configs/experiment.yaml), run for real on the records: every planted kind
    is dropped by exactly the filter it was planted for, and no clean record is dropped."""
    records, _ = data
    cfg = yaml.safe_load((ROOT / "configs" / "experiment.yaml").read_text())
    chain = build_chain(FilterConfig.model_validate(cfg["filters"]).filters)
    rows = [{"id": r["id"], "source": "experiment", "messages": r["messages"], "annotations": r["annotations"],
             "meta": json.dumps(r["meta"])} for r in records]
    out = run_chain(FilterBatch(pa.Table.from_pylist(rows, schema=RECORD_SCHEMA)), chain)
    caught = {}
    for rej in out.rejected:
        for rid, name in zip(rej["id"].to_pylist(), rej["reject_filter"].to_pylist(), strict=True):
            caught[rid] = name
    expected = {"wrong_low": "min_rating", "wrong_disputed": "max_rating_spread", "junk": "flagged_labels",
                "single": "min_annotators", "clean": None}
    for r in records:
        kind = r["meta"].get("of_planted", r["meta"]["planted"])
        if "of_planted" in r["meta"] and kind == "single":
            kind = "clean"  # a copy of a single-annotator item was rated again, by several
        assert caught.get(r["id"]) == expected[kind], (r["id"], kind, caught.get(r["id"]))
    # What no filter can catch: copies of an unchecked wrong single-annotator item that others then rated well.
    kept = [json.loads(m) for m in out.kept["meta"].to_pylist()]
    kept_wrong = [m for m in kept if m["wrong"]]
    assert kept_wrong and all(m.get("of_planted") == "single" for m in kept_wrong)
    assert len(kept_wrong) / len(kept) < 0.02
