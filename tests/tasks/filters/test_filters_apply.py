"""The filter stage end to end: ledger, rejects, report, first filter wins, dry run, conservation (hypothesis)."""
from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.filters import FilterConfig, FilterSpec, ReliabilityConfig
from schemas.record import RECORD_SCHEMA
from tasks.core.stage import read_table
from tasks.filters import apply_filters
from tasks.filters.apply import FILTER_REJECT_SCHEMA

GOOD = "Plants turn sunlight, water and carbon dioxide into sugar and oxygen; that is photosynthesis."


def record(rid, anns, response=GOOD, source="s"):
    return {"id": rid, "source": source, "meta": "{}",
            "messages": [{"role": "user", "content": "How do plants eat?"}, {"role": "assistant", "content": response}],
            "annotations": [{"annotator_id": a, "rating": r, "labels": list(lb)} for a, r, lb in anns]}


def write_shards(directory: Path, rows: list[dict], per_shard: int = 1000) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(0, max(len(rows), 1), per_shard):
        pq.write_table(pa.Table.from_pylist(rows[i:i + per_shard], RECORD_SCHEMA), directory / f"part-{i:05d}.parquet")
    return directory


CLEAN = [("a", 4, []), ("b", 5, [])]
PLANTED = [
    record("clean1", CLEAN),
    record("clean2", [("a", 4, []), ("b", 4, []), ("c", 5, ["spam"])]),      # a lone flag: kept
    record("single", [("a", 5, [])]),
    record("flagged", [("a", 4, ["toxic"]), ("b", 4, ["toxic"]), ("c", 4, [])]),
    record("lowrated", [("a", 1, []), ("b", 2, [])]),
    record("disagree", [("a", 1, []), ("b", 5, []), ("c", 5, [])]),
    record("short", CLEAN, response="Yes."),
    record("refusal", CLEAN, response="As an AI language model, I cannot tell you about plants, sorry."),
    record("pii", CLEAN, response=GOOD + " Questions? Write to botanist@example.org."),
    # breaks both min_rating and response_length: the first filter in the chain gets it
    record("both", [("a", 1, []), ("b", 1, [])], response="No."),
]


def test_default_chain_drops_planted_items_and_keeps_clean(tmp_path):
    src = write_shards(tmp_path / "in", PLANTED, per_shard=4)
    out = tmp_path / "out"
    out.mkdir()
    ledger = apply_filters(src, FilterConfig(batch_size=3), out)
    ledger.check()
    kept = read_table(out / "data")
    assert kept.schema == RECORD_SCHEMA
    assert kept.column("id").to_pylist() == ["clean1", "clean2", "pii"]
    assert "[EMAIL]" in kept.to_pylist()[2]["messages"][1]["content"]        # redacted, not dropped
    rejects = read_table(out / "rejects")
    assert rejects.schema == FILTER_REJECT_SCHEMA
    why = dict(zip(rejects.column("id").to_pylist(), rejects.column("reject_reason").to_pylist(), strict=True))
    assert why == {"single": "too_few_annotators", "flagged": "flagged:toxic", "lowrated": "low_rating",
                   "disagree": "low_agreement", "short": "too_short", "refusal": "refusal", "both": "low_rating"}
    row = rejects.to_pylist()[rejects.column("id").to_pylist().index("lowrated")]
    assert row["reject_stage"] == "filter" and row["reject_filter"] == "min_rating"
    assert row["reject_detail"] == "min_rating: mean=1.5<3.0"
    assert ledger.n_in == 10 and ledger.kept == 3 and ledger.dropped["low_rating"] == 2
    assert ledger.extra["stats"]["pii_redacted:email"] == 1
    assert set(ledger.extra["agreement"]["s"]) >= {"alpha_ordinal", "alpha_interval", "pairable_units"}
    report = json.loads((out / "report.json").read_text())
    table = {(r["filter"], r["reason"]): (r["dropped"], r["pct_of_input"]) for r in report["table"]}
    assert table[("min_rating", "low_rating")] == (2, 20.0)
    assert [r["filter"] for r in report["table"]][:2] == ["min_annotators", "flagged_labels"]  # chain order
    assert report["examples"]["min_rating / low_rating"][0]["id"] == "lowrated"
    md = (out / "report.md").read_text()
    assert "| min_rating | low_rating | 2 | 20.00 |" in md and "Krippendorff" in md


def test_dry_run_keeps_everything_and_reports_would_drop(tmp_path):
    src = write_shards(tmp_path / "in", PLANTED)
    out = tmp_path / "out"
    out.mkdir()
    ledger = apply_filters(src, FilterConfig(dry_run=True), out)
    ledger.check()
    assert ledger.kept == ledger.n_in == 10 and not ledger.dropped
    assert ledger.extra["would_drop"] == {"too_few_annotators": 1, "flagged:toxic": 1, "low_rating": 2,
                                          "low_agreement": 1, "too_short": 1, "refusal": 1}
    data = read_table(out / "data")
    assert data.num_rows == 10
    assert "botanist@example.org" in json.dumps(data.to_pylist())            # nothing rewritten either
    assert read_table(out / "rejects").num_rows == 0
    assert read_table(out / "would_reject").num_rows == 7
    assert "dry run" in (out / "report.md").read_text()


def test_unreliable_annotator_left_out_before_aggregating(tmp_path):
    rows = []
    for i in range(12):
        good = 3 + i % 3                                  # three honest annotators agree: 3, 4 or 5
        rows.append(record(f"r{i}", [("a", good, []), ("b", good, []), ("c", good, []), ("troll", 6 - good, [])]))
    src = write_shards(tmp_path / "in", rows)
    chain = [FilterSpec(name="min_rating", params={"threshold": 3.6})]
    out1, out2 = tmp_path / "o1", tmp_path / "o2"
    out1.mkdir(), out2.mkdir()
    plain = apply_filters(src, FilterConfig(filters=chain), out1)
    assert plain.kept == 4                             # with the troll only the 5s keep a mean >= 3.6
    assert plain.extra["unreliable_annotators"] == ["troll"]
    cleaned = apply_filters(src, FilterConfig(filters=chain, reliability=ReliabilityConfig(exclude_unreliable=True)),
                            out2)
    assert cleaned.kept == 8 and cleaned.extra["excluded_annotators"] == 1
    figures = cleaned.extra["agreement"]["s"]
    assert figures["alpha_interval_reliable_only"] == 1.0 > figures["alpha_interval"]
    report = json.loads((out2 / "report.json").read_text())
    assert report["annotators"]["troll"]["correlation"] < 0 and report["excluded_annotators"] == ["troll"]


def test_empty_input_writes_empty_outputs(tmp_path):
    src = write_shards(tmp_path / "in", [])
    out = tmp_path / "out"
    out.mkdir()
    ledger = apply_filters(src, FilterConfig(), out)
    assert (ledger.n_in, ledger.kept) == (0, 0)
    assert read_table(out / "data").num_rows == 0 and read_table(out / "rejects").num_rows == 0


ANNOTATION = st.tuples(st.sampled_from(["a", "b", "c", "d", None]),
                       st.one_of(st.none(), st.integers(1, 5).map(float)),
                       st.lists(st.sampled_from(["spam", "toxic", "pii", "off_topic", "ok"]), max_size=2))
RESPONSE = st.sampled_from(["", "Yes.", GOOD, "As an AI language model, I can't.", "x@example.com " + GOOD,
                            "Here:\n```python\nx = 1", "# # # # # # # # title", GOOD + "\n" + GOOD + "\n" + GOOD])
RECORDS = st.lists(st.tuples(st.lists(ANNOTATION, max_size=5), RESPONSE, st.sampled_from(["s1", "s2"])),
                   max_size=25)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(RECORDS, st.integers(1, 7), st.booleans())
def test_ledger_conservation_over_the_whole_chain(recs, batch_size, dry_run):
    rows = [record(f"id{i}", anns, resp, src) for i, (anns, resp, src) in enumerate(recs)]
    with tempfile.TemporaryDirectory() as tmp:
        src = write_shards(Path(tmp) / "in", rows, per_shard=5)
        out = Path(tmp) / "out"
        out.mkdir()
        ledger = apply_filters(src, FilterConfig(batch_size=batch_size, dry_run=dry_run), out)
        ledger.check()                                               # in == kept + sum(dropped)
        kept_ids = read_table(out / "data").column("id").to_pylist()
        rejects = read_table(out / ("would_reject" if dry_run else "rejects"))
        rej_ids = rejects.column("id").to_pylist()
        assert ledger.n_in == len(rows)
        if dry_run:
            assert sorted(kept_ids) == sorted(r["id"] for r in rows)
            assert sum(ledger.extra["would_drop"].values()) == len(rej_ids)
        else:
            assert ledger.kept == len(kept_ids)
            assert sorted(kept_ids + rej_ids) == sorted(r["id"] for r in rows)   # every record exactly once
            assert Counter(rejects.column("reject_reason").to_pylist()) == ledger.dropped


def test_parallel_workers_give_the_same_outputs_in_the_same_order(tmp_path):
    src = write_shards(tmp_path / "in", PLANTED * 3, per_shard=7)
    outs = {}
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        out.mkdir()
        ledger = apply_filters(src, FilterConfig(workers=workers, batch_size=4), out)
        outs[workers] = (ledger.to_dict()["dropped"], read_table(out / "data").to_pylist(),
                         read_table(out / "rejects").to_pylist(), json.loads((out / "report.json").read_text()))
    assert outs[1][:3] == outs[2][:3]
    assert outs[1][3]["examples"] == outs[2][3]["examples"]
    assert [r["id"] for r in outs[1][1]] == [r["id"] for r in PLANTED * 3 if r["id"] in {"clean1", "clean2", "pii"}]


EXPECTED_REASON = {"low_rating": "low_rating", "low_agreement": "low_agreement", "few_annotators": "too_few_annotators"}


def test_default_chain_on_the_bundled_sample(tmp_path):
    """The defaults drop every planted bad item of data/sample.jsonl for its reason and keep every clean one."""
    sample = Path(__file__).resolve().parents[3] / "data" / "sample.jsonl"
    rows, planted = [], {}
    for line in sample.read_bytes().splitlines():
        try:  # malformed lines are ingest's business (quarantine); skip them here
            r = json.loads(line)
            row = {"id": r["id"], "source": "sample", "messages": r["messages"], "annotations": r["annotations"],
                   "meta": json.dumps(r.get("meta", {}))}
            pa.Table.from_pylist([row], RECORD_SCHEMA)
        except Exception:
            continue
        rows.append(row)
        planted[r["id"]] = r.get("meta", {}).get("planted")
    src = write_shards(tmp_path / "in", rows)
    out = tmp_path / "out"
    out.mkdir()
    ledger = apply_filters(src, FilterConfig(), out)
    ledger.check()
    rejects = read_table(out / "rejects")
    why = dict(zip(rejects.column("id").to_pylist(), rejects.column("reject_reason").to_pylist(), strict=True))
    kept = set(read_table(out / "data").column("id").to_pylist())
    for rid, kind in planted.items():
        if kind in ("clean", "exact_dup", "near_dup"):
            assert rid in kept, (rid, kind, why.get(rid))
        elif kind in EXPECTED_REASON:
            assert why.get(rid) == EXPECTED_REASON[kind], (rid, kind)
        elif kind == "flagged":
            assert why.get(rid, "").startswith("flagged:"), rid
    assert sum(k == "clean" for k in planted.values()) > 1000
