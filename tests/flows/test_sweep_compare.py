"""The shared eval set a sweep measures every variant on, and the comparison table and plot."""
import json
import math

import pyarrow as pa
import pytest

from schemas.record import RECORD_SCHEMA
from tasks.core.stage import ShardWriter, read_ledger, read_table
from tasks.sweep.compare import (
    VariantResult,
    comparison_markdown,
    comparison_rows,
    generation_rows,
    plot_loss_vs_records,
    publish_comparison,
    shared_eval_split,
    text_plot,
)

LONG = ("the quick brown fox jumps over the lazy dog while the farmer counts his sheep in the green valley "
        "before the sun sets behind the old stone mill")


def records(rows: list[tuple[str, str, str]]) -> pa.Table:
    return pa.Table.from_pylist([{"id": i, "source": "s", "messages": [{"role": "user", "content": q},
                                                                        {"role": "assistant", "content": a}],
                                  "annotations": [], "meta": "{}"} for i, q, a in rows], schema=RECORD_SCHEMA)


def write(directory, rows):
    with ShardWriter(directory, RECORD_SCHEMA) as w:
        w.write(records(rows))


@pytest.fixture
def split_dirs(tmp_path):
    ref, var = tmp_path / "ref", tmp_path / "var"
    write(ref / "eval", [("e1", "Tell me a story.", LONG), ("e2", "What is 2+2?", "It is 4.")])
    write(var / "train", [
        ("e2", "What is 2+2?", "It is 4."),  # an eval id (another split setting would put it here)
        ("t1", "Tell me a tale.", LONG.replace("green", "wide")),  # a near-copy of e1 a loose dedup kept
        ("t2", "Name a colour.", "Blue is a colour that many people like."),
        ("t3", "Capital of France?", "Paris is the capital of France."),
    ])
    write(var / "eval", [("v1", "Spell cat.", "C, A, T.")])
    return ref, var


def test_shared_eval_split_holds_out_leaks_and_accounts_for_every_record(split_dirs, tmp_path):
    ref, var = split_dirs
    out = tmp_path / "out"
    ledger = shared_eval_split(var, ref / "eval", ngram=8, max_overlap=0.5, out=out)
    ledger.check()
    assert ledger.n_in == 4 + 1 + 2 and ledger.kept == 2 + 2
    assert dict(ledger.dropped) == {"in_shared_eval": 1, "overlaps_shared_eval": 1, "variant_eval_replaced": 1}
    assert sorted(read_table(out / "train")["id"].to_pylist()) == ["t2", "t3"]
    assert sorted(read_table(out / "eval")["id"].to_pylist()) == ["e1", "e2"]  # the reference's eval, whole
    rejects = read_table(out / "rejects")
    reasons = dict(zip(rejects["id"].to_pylist(), rejects["reject_reason"].to_pylist()))
    assert reasons == {"e2": "in_shared_eval", "t1": "overlaps_shared_eval", "v1": "variant_eval_replaced"}
    detail = rejects.filter(pa.compute.equal(rejects["id"], "t1"))["reject_detail"][0].as_py()
    assert detail.startswith("8-gram overlap=")
    assert set(rejects["reject_stage"].to_pylist()) == {"shared_eval_split"}


def test_leak_check_threshold_is_respected(split_dirs, tmp_path):
    ref, var = split_dirs
    ledger = shared_eval_split(var, ref / "eval", ngram=8, max_overlap=1.0, out=tmp_path / "loose")
    assert "overlaps_shared_eval" not in ledger.dropped and ledger.extra["train"] == 3


def test_shared_eval_split_task_is_content_addressed(split_dirs, tmp_path):
    from schemas.sweep import SweepConfig
    from tasks.core.stage import StageOutput
    from tasks.sweep.compare import shared_eval_split_task

    ref, var = split_dirs
    for d in (ref, var):
        (d / "stats.json").write_text(json.dumps({"stage": "split", "in": 0, "kept": 0, "dropped": {}}))
        (d / "_SUCCESS").write_text("")
    sweep = SweepConfig(base="unused.yaml")
    first = shared_eval_split_task.fn(StageOutput("split", "var", var), StageOutput("split", "ref", ref), sweep,
                                      str(tmp_path / "work"))
    again = shared_eval_split_task.fn(StageOutput("split", "var", var), StageOutput("split", "ref", ref), sweep,
                                      str(tmp_path / "work"))
    stricter = shared_eval_split_task.fn(StageOutput("split", "var", var), StageOutput("split", "ref", ref),
                                         sweep.model_copy(update={"eval_overlap_max": 0.9}), str(tmp_path / "work"))
    assert first.path == again.path != stricter.path
    read_ledger(first.path).check()


def result(name, loss, kept, base=5.0, samples=()):
    return VariantResult(name, {"x": name}, f"run-{name}", "c", kept, kept - 10,
                         {"adapter_eval_loss": loss, "base_eval_loss": base, "adapter_perplexity": math.exp(loss),
                          "eval_loss_delta": loss - base, "train_loss": loss + 0.1, "steps": 3},
                         list(samples))


def test_comparison_ranks_by_eval_loss_and_sorts_failures_last():
    rows = comparison_rows([result("a", 4.0, 100), result("failed", float("nan"), 0), result("b", 3.5, 80)])
    assert [(r["rank"], r["variant"]) for r in rows] == [(1, "b"), (2, "a"), (3, "failed")]
    assert rows[0]["records_kept"] == 80 and rows[0]["train_records"] == 70
    assert rows[0]["eval_loss_delta"] == pytest.approx(-1.5)
    md = comparison_markdown(rows, "s")
    assert "Best: **b**, eval loss 3.5000" in md and "| 3 | failed |" in md and "n/a" in md


def test_text_plot_places_the_best_variant_lowest():
    rows = comparison_rows([result("a", 4.0, 100), result("b", 3.5, 80)])
    lines = text_plot(rows, width=20, height=5).splitlines()
    assert "1" in lines[4] and "2" in lines[0]  # rank 1 (lowest loss) on the bottom line, rank 2 on top
    assert lines[4].index("1") < lines[0].index("2")  # fewer records kept: further left


def test_plot_and_publish_write_the_comparison(tmp_path):
    samples = [{"prompt": "p", "base": "b", "adapter": "x"}]
    results = [result("a", 4.0, 100, samples=samples), result("b", 3.5, 80, samples=samples)]
    png = plot_loss_vs_records(comparison_rows(results), tmp_path / "p.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = publish_comparison(results, tmp_path / "cmp", "s")  # outside a flow and a run: files only
    assert json.loads((tmp_path / "cmp/comparison.json").read_text()) == json.loads(json.dumps(rows))
    assert (tmp_path / "cmp/eval_loss_vs_records.png").is_file()
    gens = generation_rows(results)
    assert [g["variant"] for g in gens] == ["a", "b"] and gens[0]["prompt"] == "p"


def task_result(name, loss, em, code_em, base_em=0.0):
    """A variant whose evaluation scored the held-out set: overall and a 'code' family."""
    r = result(name, loss, 100)
    r.metrics["task"] = [{"name": "heldout", "adapter": {"": {"exact_match": em}, "code": {"exact_match": code_em}},
                          "base": {"": {"exact_match": base_em}}}]
    r.model_uri = f"models:/m-{name}"
    return r


def test_comparison_ranks_by_task_score_when_variants_have_one():
    # b has the lower eval loss but answers worse: the task score decides, eval loss breaks ties
    rows = comparison_rows([task_result("a", 4.0, 0.8, 0.9), task_result("b", 3.0, 0.5, 0.2),
                            task_result("c", 3.9, 0.8, 0.7), result("failed", float("nan"), 0)],
                           rank_metric="exact_match")
    assert [r["variant"] for r in rows] == ["c", "a", "b", "failed"]
    assert rows[0]["task_score"] == 0.8 and rows[0]["family:code"] == 0.7 and rows[0]["base_task_score"] == 0.0
    assert rows[0]["model_uri"] == "models:/m-c"
    md = comparison_markdown(rows, "s")
    assert "Best: **c**, task score (exact_match) 0.8000" in md
    header = next(line for line in md.splitlines() if line.startswith("| rank |"))
    assert "| base_task_score | family:code | eval_loss |" in header


def test_without_task_scores_the_ranking_stays_by_eval_loss():
    rows = comparison_rows([result("a", 4.0, 100), result("b", 3.5, 80)], rank_metric="exact_match")
    assert [r["variant"] for r in rows] == ["b", "a"] and all(math.isnan(r["task_score"]) for r in rows)
