"""Ingest: each format preset, each kind of bad input, stable ids, the ledger, the CLI, the lineage."""
from __future__ import annotations

import bz2
import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from schemas.ingest import IngestConfig, SourceConfig
from tasks.core.stage import read_table
from tasks.ingest.stage import IngestError, ingest, record_id, source_fingerprint
from tests.tasks.ingest.util import records

ANN = [{"annotator_id": "a1", "rating": 4, "labels": []}, {"annotator_id": "a2", "rating": 5, "labels": ["pii"]}]
CHAT = [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "2 + 2 = 4."}]


def jsonl(path: Path, rows: list) -> Path:
    path.write_bytes(b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows))
    return path


def run(tmp_path: Path, out: str = "out", shard_rows: int = 50_000, max_record_bytes: int = 1_000_000,
        **src) -> tuple:
    src.setdefault("name", "t")
    cfg = IngestConfig(sources=[SourceConfig(**src)], shard_rows=shard_rows, max_record_bytes=max_record_bytes)
    ledger = ingest(cfg, tmp_path / out)
    ledger.check()
    return ledger, records(tmp_path / out / "data"), read_table(tmp_path / out / "rejects").to_pylist()


def test_messages_preset_keeps_annotations_meta_and_extra_fields(tmp_path):
    p = jsonl(tmp_path / "a.jsonl", [{"id": "x1", "messages": CHAT, "annotations": ANN, "meta": {"topic": "math"},
                                      "lang": "en"}])
    ledger, rows, rejects = run(tmp_path, path=str(p), format="messages")
    assert (ledger.n_in, ledger.kept, rejects) == (1, 1, [])
    r = rows[0]
    assert r["messages"] == CHAT and r["source"] == "t" and r["id"] == record_id("t", "x1")
    assert r["annotations"] == [{"annotator_id": "a1", "rating": 4.0, "labels": []},
                                {"annotator_id": "a2", "rating": 5.0, "labels": ["pii"]}]
    assert json.loads(r["meta"]) == {"topic": "math", "lang": "en", "source_id": "x1"}


def test_openai_content_parts_and_role_aliases(tmp_path):
    row = {"messages": [{"role": "developer", "content": "Be brief."},
                        {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
                        {"role": "model", "content": "Hello."}]}
    _, rows, _ = run(tmp_path, path=str(jsonl(tmp_path / "a.jsonl", [row])))
    assert rows[0]["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
                                   {"role": "assistant", "content": "Hello."}]


@pytest.mark.parametrize("fmt,row,expected", [
    ("alpaca", {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
     [("user", "Add the numbers.\n\n2 and 3"), ("assistant", "5")]),
    ("alpaca", {"instruction": "Say hi.", "input": "", "output": "Hi!", "system": "You are kind."},
     [("system", "You are kind."), ("user", "Say hi."), ("assistant", "Hi!")]),
    ("sharegpt", {"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "Q"},
                                    {"from": "gpt", "value": "A"}]},
     [("system", "S"), ("user", "Q"), ("assistant", "A")]),
    ("prompt_completion", {"prompt": "Capital of Peru?", "completion": "Lima."},
     [("user", "Capital of Peru?"), ("assistant", "Lima.")]),
    ("prompt_completion", {"prompt": [{"role": "user", "content": "Q"}],
                           "completion": [{"role": "assistant", "content": "A"}]},
     [("user", "Q"), ("assistant", "A")]),
    ("text", {"text": "A plain document."}, [("assistant", "A plain document.")]),
])
@pytest.mark.parametrize("explicit", [True, False])
def test_each_preset_explicit_and_auto_detected(tmp_path, fmt, row, expected, explicit):
    p = jsonl(tmp_path / "a.jsonl", [row])
    ledger, rows, _ = run(tmp_path, path=str(p), format=fmt if explicit else "auto")
    assert ledger.kept == 1
    assert [(m["role"], m["content"]) for m in rows[0]["messages"]] == expected
    assert ledger.extra["sources"][0]["format"] == fmt


def test_field_map_and_flat_annotation_map(tmp_path):
    row = {"uid": 7, "q": {"text": "Why?"}, "a": "Because.", "scores": [2, 4.5], "workers": ["w1", "w2"],
           "tags": [["spam"], []]}
    p = jsonl(tmp_path / "a.jsonl", [row])
    _, rows, _ = run(tmp_path, path=str(p), format="prompt_completion",
                     field_map={"id": "uid", "prompt": "q.text", "completion": "a"},
                     annotation_map={"ratings": "scores", "annotator_ids": "workers", "label_lists": "tags"})
    r = rows[0]
    assert r["id"] == record_id("t", 7) != record_id("t", "7")  # an integer id is not its digits as a string
    assert r["messages"] == [{"role": "user", "content": "Why?"}, {"role": "assistant", "content": "Because."}]
    assert r["annotations"] == [{"annotator_id": "w1", "rating": 2.0, "labels": ["spam"]},
                                {"annotator_id": "w2", "rating": 4.5, "labels": []}]
    assert json.loads(r["meta"]) == {"source_id": 7}  # every consumed field left meta


def test_annotation_keys_renamed_inside_objects(tmp_path):
    row = {"messages": CHAT, "votes": [{"who": "u9", "score": "3", "flags": "toxic"}]}
    _, rows, _ = run(tmp_path, path=str(jsonl(tmp_path / "a.jsonl", [row])),
                     annotation_map={"annotations": "votes", "annotator_id": "who", "rating": "score",
                                     "labels": "flags"})
    assert rows[0]["annotations"] == [{"annotator_id": "u9", "rating": 3.0, "labels": ["toxic"]}]


BAD_LINES = [
    (b'{"messages": [', "invalid_json"),
    (b"{'messages': []}", "invalid_json"),
    (b'{"messages": [{"role": "user", "content": "hi \xff\xfe"}]}', "invalid_utf8"),
    (b"", "blank_line"),
    (b"   ", "blank_line"),
    (b'["a", "list"]', "not_an_object"),
    (b'42', "not_an_object"),
    (json.dumps({"id": "n", "annotations": ANN}).encode(), "missing_field"),
    (json.dumps({"messages": "user: hi"}).encode(), "wrong_type"),
    (json.dumps({"messages": [CHAT[0], "oops"]}).encode(), "wrong_type"),
    (json.dumps({"messages": []}).encode(), "empty_messages"),
    (json.dumps({"messages": [CHAT[0], {"role": "assistant", "content": "  "}]}).encode(), "empty_content"),
    (json.dumps({"messages": [CHAT[0], {"role": "robot", "content": "4"}]}).encode(), "bad_role"),
    (json.dumps({"messages": [CHAT[0], {"content": "4"}]}).encode(), "missing_field"),
    (json.dumps({"messages": [CHAT[0]]}).encode(), "no_assistant"),
    (json.dumps({"messages": CHAT, "annotations": "great"}).encode(), "wrong_type"),
    (json.dumps({"messages": CHAT, "annotations": [{"rating": [5]}]}).encode(), "wrong_type"),
    (json.dumps({"messages": CHAT, "annotations": [{"rating": "high"}]}).encode(), "wrong_type"),
    (json.dumps({"messages": CHAT, "annotations": [{"labels": [1, 2]}]}).encode(), "wrong_type"),
    (json.dumps({"id": ["x"], "messages": CHAT}).encode(), "wrong_type"),
    (json.dumps({"id": "big", "messages": [CHAT[0], {"role": "assistant", "content": "x" * 500}]}).encode(),
     "oversize"),
]


@pytest.mark.parametrize("line,reason", BAD_LINES, ids=[f"{r}-{i}" for i, (_, r) in enumerate(BAD_LINES)])
def test_each_bad_line_is_quarantined_with_reason_and_line_number(tmp_path, line, reason):
    good = json.dumps({"id": "ok", "messages": CHAT}).encode()
    p = jsonl(tmp_path / "a.jsonl", [good, line, good.replace(b'"ok"', b'"ok2"')])
    ledger, rows, rejects = run(tmp_path, path=str(p), format="messages", max_record_bytes=300)
    assert (ledger.n_in, ledger.kept, dict(ledger.dropped)) == (3, 2, {reason: 1})
    assert [r["location"] for r in rejects] == [f"{p}:2"]
    assert rejects[0]["reject_reason"] == reason and rejects[0]["source"] == "t"
    assert rejects[0]["reject_detail"]
    assert rejects[0]["raw"] == line[:2000].decode("utf-8", errors="backslashreplace")


def test_duplicate_ids_quarantined_but_identical_idless_rows_get_distinct_ids(tmp_path):
    rows_in = [{"id": "a", "messages": CHAT}, {"id": "a", "messages": CHAT}, {"messages": CHAT}, {"messages": CHAT}]
    ledger, rows, rejects = run(tmp_path, path=str(jsonl(tmp_path / "a.jsonl", rows_in)))
    assert dict(ledger.dropped) == {"duplicate_id": 1} and rejects[0]["location"].endswith(":2")
    ids = [r["id"] for r in rows]
    assert len(set(ids)) == 3


def test_ids_are_stable_across_runs_shards_and_directories(tmp_path):
    rows_in = [{"messages": [{"role": "user", "content": f"q{i % 7}"}, {"role": "assistant", "content": "a"}]}
               for i in range(40)] + [{"id": f"r{i}", "messages": CHAT} for i in range(10)]
    a = jsonl(tmp_path / "a.jsonl", rows_in)
    other = tmp_path / "elsewhere"
    other.mkdir()
    b = jsonl(other / "copy.jsonl", rows_in)
    _, first, _ = run(tmp_path, out="o1", path=str(a))
    _, second, _ = run(tmp_path, out="o2", path=str(b), shard_rows=7)
    assert [r["id"] for r in first] == [r["id"] for r in second]
    assert len({r["id"] for r in first}) == 50
    _, renamed, _ = run(tmp_path, out="o3", path=str(a), name="other")
    assert not {r["id"] for r in renamed} & {r["id"] for r in first}  # the source name is part of the id


def test_shards_are_bounded_and_limit_counts_rows_read(tmp_path):
    p = jsonl(tmp_path / "a.jsonl", [{"id": str(i), "messages": CHAT} for i in range(25)])
    ledger, rows, _ = run(tmp_path, path=str(p), shard_rows=10)
    assert len(list((tmp_path / "out/data").glob("*.parquet"))) == 3 and len(rows) == 25
    ledger, rows, _ = run(tmp_path, out="lim", path=str(p), limit=7)
    assert ledger.n_in == 7 and len(rows) == 7


def test_oversize_line_is_skipped_without_holding_it(tmp_path, monkeypatch):
    import tasks.ingest.readers as readers
    monkeypatch.setattr(readers, "BLOCK_BYTES", 64)  # the long line spans many blocks
    good = json.dumps({"messages": CHAT}).encode()
    p = jsonl(tmp_path / "a.jsonl", [good, b'{"messages": "' + b"z" * 5000 + b'"}', good, b"x" * 400])
    ledger, rows, rejects = run(tmp_path, path=str(p), max_record_bytes=200)
    assert (ledger.n_in, ledger.kept, dict(ledger.dropped)) == (4, 2, {"oversize": 2})
    assert [r["location"].rsplit(":", 1)[1] for r in rejects] == ["2", "4"]


def test_glob_directory_compression_csv_parquet_text_and_json_array(tmp_path):
    d = tmp_path / "src"
    (d / "sub").mkdir(parents=True)
    jsonl(d / "a.jsonl", [{"id": "1", "messages": CHAT}])
    (d / "b.jsonl.gz").write_bytes(gzip.compress(json.dumps({"id": "2", "messages": CHAT}).encode() + b"\n"))
    (d / "sub" / "c.json").write_text(json.dumps([{"id": "3", "messages": CHAT}, {"id": "4", "messages": CHAT}]))
    (d / "notes.yaml").write_text("ignored: true\n")
    ledger, rows, _ = run(tmp_path, path=str(d))
    assert sorted(json.loads(r["meta"])["source_id"] for r in rows) == ["1", "2", "3", "4"]
    assert ledger.extra["sources"][0]["n_files"] == 3

    ledger, rows, _ = run(tmp_path, out="glob", path=str(d / "*.jsonl*"))
    assert ledger.kept == 2

    csv = tmp_path / "t.csv"
    csv.write_text('instruction,input,output,rating\nAdd,"1, 2",3,4\n,,,\nBad,row\nDouble,2,4,"5"\n')
    ledger, rows, rejects = run(tmp_path, out="csv", path=str(csv), format="alpaca",
                                annotation_map={"ratings": "rating"})
    assert rows[0]["messages"][0]["content"] == "Add\n\n1, 2" and rows[0]["annotations"][0]["rating"] == 4.0
    assert dict(ledger.dropped) == {"blank_line": 1, "wrong_type": 1} and rejects[1]["location"].endswith("#2")

    pq.write_table(pa.Table.from_pylist([{"prompt": "p", "completion": "c"}, {"prompt": "p2", "completion": None}]),
                   tmp_path / "t.parquet")
    ledger, rows, rejects = run(tmp_path, out="pq", path=str(tmp_path / "t.parquet"))
    assert ledger.kept == 1 and rejects[0]["location"].endswith("t.parquet#1")

    (tmp_path / "t.txt.bz2").write_bytes(bz2.compress(b"first doc\n\nsecond doc\n"))
    ledger, rows, _ = run(tmp_path, out="txt", path=str(tmp_path / "t.txt.bz2"), format="text")
    assert [r["messages"][0]["content"] for r in rows] == ["first doc", "second doc"]
    assert dict(ledger.dropped) == {"blank_line": 1}


def test_fsspec_url_source(tmp_path):
    import fsspec
    with fsspec.open("memory://ingest-test/x.jsonl", "wb") as f:
        f.write(json.dumps({"messages": CHAT}).encode() + b"\n")
    ledger, rows, _ = run(tmp_path, path="memory://ingest-test/x.jsonl")
    assert ledger.kept == 1 and ledger.extra["sources"][0]["files"] == ["memory:///ingest-test/x.jsonl"]


def test_missing_or_empty_source_is_a_clear_error(tmp_path):
    with pytest.raises(IngestError, match="nope.jsonl"):
        run(tmp_path, path=str(tmp_path / "nope.jsonl"))
    (tmp_path / "empty.jsonl").write_bytes(b"")
    with pytest.raises(IngestError, match="empty.jsonl.*yields no rows"):
        run(tmp_path, path=str(tmp_path / "empty.jsonl"))
    with pytest.raises(IngestError, match="no readable files"):
        run(tmp_path, path=str(tmp_path / "*.csv"))


def test_config_rejects_duplicate_source_names_and_unknown_map_keys():
    with pytest.raises(ValueError, match="unique"):
        IngestConfig(sources=[{"name": "a", "path": "x"}, {"name": "a", "path": "y"}])
    with pytest.raises(ValueError, match="unknown field_map keys"):
        SourceConfig(name="a", path="x", field_map={"promt": "q"})


def test_fingerprint_follows_content(tmp_path):
    p = jsonl(tmp_path / "a.jsonl", [{"messages": CHAT}])
    src = SourceConfig(name="a", path=str(p))
    first = source_fingerprint(src)
    assert source_fingerprint(src) == first
    p.write_bytes(p.read_bytes().replace(b"4.", b"5."))
    assert source_fingerprint(src) != first


def test_multiple_sources_add_up_in_one_ledger(tmp_path):
    a = jsonl(tmp_path / "a.jsonl", [{"id": "1", "messages": CHAT}, b"{"])
    b = jsonl(tmp_path / "b.jsonl", [{"id": "1", "text": "doc"}])
    cfg = IngestConfig(sources=[{"name": "a", "path": str(a)}, {"name": "b", "path": str(b), "weight": 2.0}])
    ledger = ingest(cfg, tmp_path / "out")
    assert (ledger.n_in, ledger.kept, dict(ledger.dropped)) == (3, 2, {"invalid_json": 1})
    srcs = {s["name"]: s for s in ledger.extra["sources"]}
    assert srcs["a"]["format"] == "messages" and srcs["b"]["format"] == "text" and srcs["b"]["weight"] == 2.0
    assert srcs["a"]["rows_in"] == 2 and srcs["a"]["dropped"] == {"invalid_json": 1}
    assert len(srcs["a"]["digest"]) == 32 and srcs["a"]["digest"] != srcs["b"]["digest"]
    assert srcs["a"]["schema"] == {"id": "str", "messages": "list"}


def test_bundled_sample_ingests_with_every_malformed_line_quarantined(tmp_path):
    sample = Path(__file__).resolve().parents[3] / "data" / "sample.jsonl"
    ledger, rows, rejects = run(tmp_path, path=str(sample), name="sample")
    assert (ledger.n_in, ledger.kept) == (1488, 1476)
    assert sum(ledger.dropped.values()) == 12 == len(rejects)
    assert {"invalid_json", "invalid_utf8", "blank_line", "missing_field", "wrong_type", "empty_messages",
            "empty_content", "bad_role", "not_an_object", "duplicate_id"} == set(ledger.dropped)
    planted = [json.loads(r["meta"])["planted"] for r in rows]
    assert planted.count("exact_dup") == 75 and planted.count("near_dup") == 120


def test_oversize_table_rows_and_unknown_format(tmp_path):
    pq.write_table(pa.Table.from_pylist([{"prompt": "p", "completion": "c" * 500}, {"prompt": "p", "completion": "c"}]),
                   tmp_path / "t.parquet")
    ledger, rows, rejects = run(tmp_path, path=str(tmp_path / "t.parquet"), max_record_bytes=200)
    assert dict(ledger.dropped) == {"oversize": 1} and rejects[0]["location"].endswith("#0")
    p = jsonl(tmp_path / "odd.jsonl", [{"question": "q", "answer": "a"}])
    ledger, _, rejects = run(tmp_path, out="odd", path=str(p))
    assert dict(ledger.dropped) == {"unknown_format": 1} and "question" in rejects[0]["reject_detail"]
