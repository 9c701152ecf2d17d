"""Ingest presets for preference layouts: every response becomes a record; the preference stage pairs them."""
import json

import pytest

from schemas.ingest import IngestConfig
from schemas.pipeline import PipelineConfig
from tasks.core.stage import read_table
from tasks.ingest.stage import ingest
from tasks.preference.stage import build_preferences
from tests.tasks.ingest.util import records

USER = {"role": "user", "content": "What is 2 + 2?"}


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def run_ingest(tmp_path, rows, fmt="auto", **src):
    path = write_jsonl(tmp_path / "in.jsonl", rows)
    cfg = IngestConfig.model_validate({"sources": [{"name": "p", "path": str(path), "format": fmt, **src}],
                                       "workers": 1})
    ledger = ingest(cfg, tmp_path / "out")
    data = records(tmp_path / "out" / "data")  # message weights left out unless a source set them
    for r in data:
        r["meta"] = json.loads(r["meta"])
    return ledger, data


def test_chosen_rejected_plain_text_with_scores(tmp_path):
    ledger, data = run_ingest(tmp_path, [
        {"id": "r1", "prompt": "What is 2 + 2?", "chosen": "4.", "rejected": "5.", "score_chosen": 9,
         "score_rejected": 2, "source_model": "m"},
        {"prompt": "Name a colour.", "chosen": "Red.", "rejected": "Seven."},
    ])
    assert ledger.extra["sources"][0]["format"] == "chosen_rejected"
    assert (ledger.n_in, ledger.kept) == (4, 4)  # one ledger row per response
    first, second = data[0], data[1]
    assert first["messages"] == [USER, {"role": "assistant", "content": "4."}]
    assert second["messages"][-1] == {"role": "assistant", "content": "5."}
    assert first["annotations"] == [{"annotator_id": "source", "rating": 9.0, "labels": []}]
    assert {k: first["meta"][k] for k in ("preference", "pair_id", "prompt_id", "source_model")} == {
        "preference": "chosen", "pair_id": "r1", "prompt_id": "r1", "source_model": "m"}
    assert second["meta"]["preference"] == "rejected" and second["meta"]["source_id"] == "r1/rejected"
    assert data[2]["annotations"] == [] and data[2]["meta"]["pair_id"] == data[3]["meta"]["pair_id"]


def test_chosen_rejected_conversational_explicit_and_implicit_prompt(tmp_path):
    answer = lambda text: [{"role": "assistant", "content": text}]  # noqa: E731
    _, data = run_ingest(tmp_path, [
        {"prompt": [USER], "chosen": answer("4."), "rejected": answer("22.")},
        {"chosen": [USER, *answer("Four.")], "rejected": [USER, *answer("Five.")]},  # Anthropic-HH style
    ], fmt="chosen_rejected")
    assert [r["messages"] for r in data] == [[USER, *answer("4.")], [USER, *answer("22.")],
                                              [USER, *answer("Four.")], [USER, *answer("Five.")]]


def test_rated_completions_with_annotations_ratings_or_a_score(tmp_path):
    ledger, data = run_ingest(tmp_path, [
        {"id": "q1", "instruction": "What is 2 + 2?", "completions": [
            {"response": "4.", "annotations": [{"annotator_id": "a", "rating": 5, "labels": []},
                                               {"annotator_id": "b", "rating": 4, "labels": ["short"]}]},
            {"text": "5.", "ratings": [1, 2], "model": "small"},
            {"response": "Four.", "overall_score": 8.5}]},
        {"prompt": "x", "completions": "not a list"},
    ])
    assert ledger.extra["sources"][0]["format"] == "rated_completions"
    assert (ledger.n_in, ledger.kept, dict(ledger.dropped)) == (4, 3, {"wrong_type": 1})
    assert [r["messages"][-1]["content"] for r in data] == ["4.", "5.", "Four."]
    assert {r["meta"]["prompt_id"] for r in data} == {"q1"}
    assert data[0]["annotations"][1] == {"annotator_id": "b", "rating": 4.0, "labels": ["short"]}
    assert [a["rating"] for a in data[1]["annotations"]] == [1.0, 2.0] and data[1]["meta"]["completion_model"] == "small"
    assert data[2]["annotations"] == [{"annotator_id": "source", "rating": 8.5, "labels": []}]
    bad = read_table(tmp_path / "out" / "rejects").to_pylist()
    assert bad[0]["location"].endswith(":2") and bad[0]["reject_reason"] == "wrong_type"


def test_given_pairs_and_rated_completions_become_preference_pairs(tmp_path):
    # One preset per source (auto decides from the first rows), so the two layouts come as two sources.
    given = write_jsonl(tmp_path / "given.jsonl", [{"id": "r1", "prompt": "What is 2 + 2?", "chosen": "4.",
                                                     "rejected": "5."}])
    rated = write_jsonl(tmp_path / "rated.jsonl", [{"id": "q2", "prompt": "Name a colour.", "completions": [
        {"response": "Red.", "ratings": [5, 5]}, {"response": "Seven.", "ratings": [1, 2]}]}])
    ingest(IngestConfig.model_validate({"sources": [{"name": "given", "path": str(given)},
                                                    {"name": "rated", "path": str(rated)}]}), tmp_path / "out")
    cfg = PipelineConfig.model_validate({"ingest": {"sources": [{"name": "p", "path": "x"}]},
                                         "train": {"objective": "dpo"}, "split": {"eval_fraction": 0.0},
                                         "preference": {"group_key": "prompt_id"}})
    ledger = build_preferences(tmp_path / "out" / "data", cfg, tmp_path / "pref")
    assert (ledger.n_in, ledger.kept) == (4, 4)
    pairs = read_table(tmp_path / "pref" / "train").to_pylist()
    got = {p["group"]: (p["chosen"][0]["content"], p["rejected"][0]["content"], p["agreement_basis"]) for p in pairs}
    assert got == {"prompt_id=r1": ("4.", "5.", "explicit"), "prompt_id=q2": ("Red.", "Seven.", "shared")}


@pytest.mark.parametrize("row, reason", [
    ({"chosen": "a", "rejected": "b"}, "missing_field"),  # plain text needs a prompt
    ({"chosen": [USER], "rejected": [{"role": "user", "content": "other"}]}, "wrong_type"),  # no shared prompt
])
def test_bad_chosen_rejected_rows_are_quarantined(tmp_path, row, reason):
    ledger, data = run_ingest(tmp_path, [row], fmt="chosen_rejected")
    assert not data and dict(ledger.dropped) == {reason: 1}
