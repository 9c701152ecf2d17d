"""The preference stage on a hand-worked set of ten records: outputs, rejects and every ledger balance."""
import json

import pyarrow as pa
import pytest

from schemas.pipeline import PipelineConfig
from schemas.record import RECORD_SCHEMA
from tasks.core.stage import ShardWriter, read_table
from tasks.preference.stage import build_preferences, normalize_prompt


def record(rid, prompt, answer, ratings=(), meta=None, roles=("user", "assistant")):
    msgs = ([{"role": roles[0], "content": prompt}] if prompt is not None else []) + \
        [{"role": roles[1], "content": answer}]
    ann = [{"annotator_id": a, "rating": float(r), "labels": []} for a, r in ratings]
    return {"id": rid, "source": "t", "messages": msgs, "annotations": ann, "meta": json.dumps(meta or {})}


XYZ = ("x", "y", "z")
RECORDS = [
    record("a", "What is 2+2?", "4.", zip(XYZ, (5, 5, 4))),
    record("b", "What is 2+2?", "Maybe 5?", zip(XYZ, (1, 2, 1))),
    record("c", "what is   2+2? ", "It is 4, I think.", zip(XYZ, (3, 3, 3))),  # same prompt once normalized
    record("d", "Name a colour.", "Red.", zip(XYZ, (5, 4, 5))),  # alone: single_response
    record("e", "Name a fruit.", "Apple.", zip(XYZ, (4, 5, 4))),
    record("f", "Name a fruit.", "A pear.", zip(XYZ, (5, 4, 4))),  # same mean as e: tie
    record("g", "Hello?", "Hi!", zip(XYZ, (5, 5, 5)), roles=("assistant", "user")),  # ends with the user
    record("h", None, "Just text.", zip(XYZ, (5, 5, 5))),  # nothing before the response
    record("i", "Name a tree.", "Oak."),  # nobody rated these two
    record("j", "Name a tree.", "Elm."),
]


def config(objective="dpo", **pref):
    return PipelineConfig.model_validate({
        "ingest": {"sources": [{"name": "t", "path": "unused"}]}, "train": {"objective": objective},
        "split": {"eval_fraction": 0.0}, "preference": {"max_pairs_per_prompt": 2, **pref}})


@pytest.fixture
def records_dir(tmp_path):
    with ShardWriter(tmp_path / "in", RECORD_SCHEMA) as w:
        w.write(pa.Table.from_pylist(RECORDS, schema=RECORD_SCHEMA))
    return tmp_path / "in"


def test_normalized_prompt_ignores_case_and_spacing_not_roles():
    user = [{"role": "user", "content": "What is 2+2?"}]
    assert normalize_prompt(user) == normalize_prompt([{"role": "user", "content": " what IS  2+2?"}])
    assert normalize_prompt(user) != normalize_prompt([{"role": "system", "content": "What is 2+2?"}])


def test_dpo_pairs_rejects_and_ledgers(records_dir, tmp_path):
    ledger = build_preferences(records_dir, config(), tmp_path / "out")
    ledger.check()
    assert (ledger.n_in, ledger.kept) == (10, 3)  # a, b, c are in kept pairs
    assert dict(ledger.dropped) == {"single_response": 1, "tie": 2, "no_response": 1, "no_prompt": 1,
                                    "no_rating": 2}
    # groups: 2+2 (a, b, c), colour (d), fruit (e, f), tree (i, j); g and h never reach a group
    assert ledger.extra["prompts"] == {"in": 4, "kept": 1, "dropped": {"no_rating": 1, "single_response": 1,
                                                                        "tie": 1}}
    # 2+2 has 3 candidates (a>b 10/3, a>c 5/3, c>b 5/3; k=2 keeps a>b, then a>c by id), fruit has 1 (a tie)
    assert ledger.extra["candidate_pairs"] == {"in": 4, "kept": 2, "dropped": {"over_max_pairs": 1, "tie": 1}}
    pairs = read_table(tmp_path / "out" / "train").to_pylist()
    assert [(p["chosen_id"], p["rejected_id"]) for p in pairs] == [("a", "b"), ("a", "c")]
    first = pairs[0]
    assert unweighted(first["prompt"]) == [{"role": "user", "content": "What is 2+2?"}]
    assert unweighted(first["chosen"]) == [{"role": "assistant", "content": "4."}]
    assert unweighted(first["rejected"]) == [{"role": "assistant", "content": "Maybe 5?"}]
    assert first["margin"] == pytest.approx(14 / 3 - 4 / 3) and first["agreement"] == 1.0
    assert (first["n_annotators"], first["agreement_basis"]) == (3, "shared")
    assert read_table(tmp_path / "out" / "eval").num_rows == 0  # eval_fraction 0
    rejects = read_table(tmp_path / "out" / "rejects").to_pylist()
    assert {r["id"]: r["reject_reason"] for r in rejects} == {
        "d": "single_response", "e": "tie", "f": "tie", "g": "no_response", "h": "no_prompt", "i": "no_rating",
        "j": "no_rating"}
    assert all(r["reject_stage"] == "preference" for r in rejects)
    bad = read_table(tmp_path / "out" / "rejected_pairs").to_pylist()
    assert sorted((p["chosen_id"], p["rejected_id"], p["reject_reason"]) for p in bad) == [
        ("c", "b", "over_max_pairs"), ("e", "f", "tie")]  # a tie is ordered by id, reproducibly
    assert sorted(read_table(tmp_path / "out" / "train_records")["id"].to_pylist()) == ["a", "b", "c"]


def test_group_key_and_split_by_group(records_dir, tmp_path):
    with ShardWriter(tmp_path / "keyed", RECORD_SCHEMA) as w:
        rows = [record(f"r{i}", f"Prompt number {i}", "Good answer." if i % 2 else "Bad.",
                       zip(XYZ, (5, 5, 5) if i % 2 else (1, 1, 1)), meta={"qid": f"q{i // 2}"}) for i in range(40)]
        rows.append(record("nokey", "Orphan", "x", zip(XYZ, (5, 5, 5))))
        w.write(pa.Table.from_pylist(rows, schema=RECORD_SCHEMA))
    cfg = config(group_key="qid").model_copy(update={"split": config().split.model_copy(update={"eval_fraction": 0.5})})
    ledger = build_preferences(tmp_path / "keyed", cfg, tmp_path / "out")
    assert ledger.dropped == {"no_group_key": 1} and ledger.kept == 40
    train, ev = (read_table(tmp_path / "out" / s).to_pylist() for s in ("train", "eval"))
    assert len(train) + len(ev) == 20 and train and ev
    assert not {p["group"] for p in train} & {p["group"] for p in ev}  # no prompt on both sides
    assert all(p["group"].startswith("qid=") for p in train + ev)


def test_kto_labels_and_ledger(records_dir, tmp_path):
    ledger = build_preferences(records_dir, config("kto"), tmp_path / "out")
    ledger.check()
    # a 14/3 desirable, b 4/3 undesirable, c 3 ambiguous; d, e, f desirable; g, h, i, j as for DPO
    assert ledger.kept == 5
    assert dict(ledger.dropped) == {"ambiguous_rating": 1, "no_response": 1, "no_prompt": 1, "no_rating": 2}
    rows = {r["example_id"]: r for r in read_table(tmp_path / "out" / "train").to_pylist()}
    assert {k: v["label"] for k, v in rows.items()} == {"a": True, "b": False, "d": True, "e": True, "f": True}
    assert unweighted(rows["b"]["completion"]) == [{"role": "assistant", "content": "Maybe 5?"}]
    assert (ledger.extra["desirable"], ledger.extra["undesirable"]) == (4, 1)


def test_sft_objective_is_refused(records_dir, tmp_path):
    with pytest.raises(ValueError, match="objective"):
        build_preferences(records_dir, config("sft"), tmp_path / "out")


def test_a_stage_that_drops_most_responses_warns_naming_the_key(records_dir, tmp_path, caplog):
    build_preferences(records_dir, config(min_margin=4.0), tmp_path / "out")  # a>b (10/3) no longer qualifies
    assert "preference.min_margin" in caplog.text and "made no pair" in caplog.text


def unweighted(messages: list[dict]) -> list[dict]:
    """Messages without their loss weight when no source set one (schemas.record: null by default)."""
    return [{k: v for k, v in m.items() if k != "weight" or v is not None} for m in messages]
