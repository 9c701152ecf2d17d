"""Eval items from the curated split and from JSONL/Parquet files, and the check that keeps eval sets out of
training; every row is an item or a counted skip, every record kept or held out with its reason."""
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from schemas.evaluate import EvalConfig, EvalSetConfig
from schemas.record import RECORD_SCHEMA
from tasks.core.stage import ShardWriter, StageOutput, read_ledger, read_table
from tasks.evaluate.evalsets import file_set, heldout_set
from tasks.evaluate.leakcheck import holdout_eval_sets, holdout_eval_sets_stage

LONG = ("the quick brown fox jumps over the lazy dog while the farmer counts his sheep in the green valley "
        "before the sun sets behind the old stone mill")


def rec(i, msgs, meta=None):
    return {"id": i, "source": "s", "messages": msgs, "annotations": [], "meta": json.dumps(meta or {})}


def write(directory, rows):
    with ShardWriter(directory, RECORD_SCHEMA) as w:
        w.write(pa.Table.from_pylist(rows, schema=RECORD_SCHEMA))


def qa(q, a):
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


def test_heldout_items_cut_at_the_last_answer_with_family_from_meta(tmp_path):
    write(tmp_path / "eval", [
        rec("b", qa("2+2?", "4"), {"task": "arith"}),
        rec("a", [{"role": "system", "content": "Be brief."}, *qa("Hi", "Hello"), {"role": "user", "content": "Cap?"},
                  {"role": "assistant", "content": "Paris"}], {"topic": "geo"}),
        rec("c", [{"role": "user", "content": "only a question"}]),
        rec("d", [{"role": "assistant", "content": "an answer to nothing"}]),
    ])
    es = heldout_set(tmp_path / "eval", "task", limit=None)
    assert [it.id for it in es.items] == ["a", "b"]  # id order
    a, b = es.items
    assert a.reference == "Paris" and [m["role"] for m in a.prompt] == ["system", "user", "assistant", "user"]
    assert a.family is None and b.family == "arith"
    assert dict(es.skipped) == {"no_assistant_answer": 1, "no_prompt_before_answer": 1}
    assert es.rows == len(es.items) + sum(es.skipped.values())
    capped = heldout_set(tmp_path / "eval", "task", limit=1)
    assert [it.id for it in capped.items] == ["a"] and capped.skipped["over_max_items"] == 1


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_eval_set_files(tmp_path, fmt):
    rows = [{"id": "x1", "question": "Capital of France?", "answer": "Paris", "kind": "geo"},
            {"id": "x2", "question": [{"role": "user", "content": "3*3?"}], "answer": "9", "kind": None},
            {"id": "x3", "question": "", "answer": "nothing asked", "kind": "geo"},
            {"id": "x4", "question": "No answer?", "answer": None, "kind": "geo"}]
    path = tmp_path / f"set.{fmt}"
    if fmt == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n{not json\n")
    else:
        pq.write_table(pa.Table.from_pylist([{**r, "question": json.dumps(r["question"])
                                              if isinstance(r["question"], list) else r["question"]}
                                             for r in rows]), path)
    cfg = EvalSetConfig(name="extra", path=str(path), prompt_field="question", reference_field="answer",
                        family_field="kind")
    es = file_set(cfg, limit=None)
    assert es.items[0].prompt == [{"role": "user", "content": "Capital of France?"}] and es.items[0].family == "geo"
    if fmt == "jsonl":
        assert es.items[1].prompt == [{"role": "user", "content": "3*3?"}] and es.items[1].family is None
        assert dict(es.skipped) == {"no_question": 1, "no_answer": 1, "unreadable_row": 1}
    assert es.rows == len(es.items) + sum(es.skipped.values())


def test_eval_set_config_checks():
    with pytest.raises(ValidationError, match="heldout"):
        EvalSetConfig(name="heldout", path="x.jsonl")
    with pytest.raises(ValidationError, match="only .jsonl"):
        EvalSetConfig(name="x", path="x.csv")
    with pytest.raises(ValidationError, match="unique"):
        EvalConfig(eval_sets=[{"name": "a", "path": "a.jsonl"}, {"name": "a", "path": "b.jsonl"}])
    with pytest.raises(FileNotFoundError, match=r"evaluate.eval_sets\[gone\].path"):
        file_set(EvalSetConfig(name="gone", path="/nonexistent/x.jsonl"), None)


def test_training_records_overlapping_an_eval_set_are_held_out(tmp_path):
    split = tmp_path / "split"
    write(split / "train", [rec("t1", qa("Tell me a tale.", LONG.replace("green", "wide"))),
                            rec("t2", qa("Name a colour.", "Blue is a colour that many people like a lot.")),
                            rec("t3", qa("Tell me a story", LONG))])
    write(split / "eval", [rec("e1", qa("2+2?", "4"))])
    (split / "stats.json").write_text(json.dumps({"stage": "split", "in": 4, "kept": 4, "dropped": {}}))
    (split / "_SUCCESS").write_text("")
    extra = tmp_path / "extra.jsonl"
    extra.write_text(json.dumps({"prompt": "Tell me a story.", "reference": LONG}) + "\n")
    cfg = EvalConfig(eval_sets=[{"name": "stories", "path": str(extra)}])
    out = holdout_eval_sets_stage(StageOutput("split", "k", split), cfg, str(tmp_path / "work"))
    ledger = read_ledger(out.path)
    ledger.check()
    assert ledger.n_in == 4 and ledger.kept == 2 and dict(ledger.dropped) == {"overlaps_eval_set": 2}
    assert read_table(out.path / "train")["id"].to_pylist() == ["t2"]
    assert read_table(out.path / "eval")["id"].to_pylist() == ["e1"]
    rejects = read_table(out.path / "rejects")
    assert sorted(rejects["id"].to_pylist()) == ["t1", "t3"]
    assert all(d.startswith("eval set stories: 8-gram overlap=") for d in rejects["reject_detail"].to_pylist())
    # no eval set configured: the split itself, untouched
    assert holdout_eval_sets_stage(StageOutput("split", "k", split), EvalConfig(), str(tmp_path)).path == split
    loose = holdout_eval_sets(split, [file_set(cfg.eval_sets[0], None)], 8, 1.0, tmp_path / "loose")
    assert loose.dropped == {} or sum(loose.dropped.values()) == 0
