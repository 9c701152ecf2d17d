"""Messy real-world input, one real file per class: a bad file is quarantined whole and the rest of the source
goes on; records are counted as the format defines them; export quirks read as their authors meant."""
from __future__ import annotations

import bz2
import csv
import gzip
import json
import os
import socket
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from schemas.ingest import IngestConfig
from tasks.core.errors import SourceError
from tasks.core.stage import read_table
from tasks.ingest.stage import ingest, record_id
from tests.tasks.ingest.util import records

CHAT = [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4."}]
GOOD = b"".join(json.dumps({"id": f"g{i}", "messages": CHAT}).encode() + b"\n" for i in range(30))


def run(tmp_path: Path, path: Path | str, **cfg):
    src = {"name": "t", "path": str(path), **cfg.pop("src", {})}
    ledger = ingest(IngestConfig(sources=[src], **cfg), tmp_path / "out")
    ledger.check()
    rejects = read_table(tmp_path / "out" / "rejects").to_pylist()
    assert len(rejects) == sum(ledger.dropped.values())
    return ledger, records(tmp_path / "out" / "data"), rejects


def one_good_file(directory: Path) -> None:
    (directory / "good.jsonl").write_bytes(GOOD)


# ------------------------------------------------------------------ per file

@pytest.mark.parametrize("name,blob,reason", [
    ("cut.jsonl.gz", gzip.compress(GOOD)[:80], "corrupt_file"),
    ("cut.jsonl.bz2", bz2.compress(GOOD)[:60], "corrupt_file"),
    ("plain.jsonl.gz", GOOD, "corrupt_file"),  # plain text named .gz
    ("damaged.parquet", b"PAR1" + os.urandom(64) + b"PAR1", "corrupt_file"),
    ("text.parquet", b"just some text\n", "corrupt_file"),  # not Parquet at all
])
def test_bad_file_is_quarantined_whole_and_the_rest_goes_on(tmp_path, name, blob, reason):
    src = tmp_path / "src"
    src.mkdir()
    one_good_file(src)
    (src / name).write_bytes(blob)
    ledger, rows, rejects = run(tmp_path, src)
    assert ledger.kept == 30 and ledger.dropped == {reason: 1}  # the bad file is one entry; no half of it kept
    (bad,) = rejects
    assert bad["location"] == str(src / name) and str(src / name) in bad["reject_detail"]
    assert {r["id"] for r in rows} == {record_id("t", f"g{i}") for i in range(30)}


def test_truncated_gzip_takes_back_the_rows_it_yielded(tmp_path):
    big = b"".join(json.dumps({"messages": CHAT, "n": i, "pad": os.urandom(40).hex()}).encode() + b"\n"
                   for i in range(60_000))
    blob = gzip.compress(big)
    (tmp_path / "cut.jsonl.gz").write_bytes(blob[: len(blob) * 3 // 4])  # thousands of rows decode first
    ledger, rows, rejects = run(tmp_path, tmp_path / "cut.jsonl.gz", shard_rows=1000)
    assert (ledger.n_in, ledger.kept, ledger.dropped) == (1, 0, {"corrupt_file": 1}) and rows == []
    assert "not kept" in rejects[0]["reject_detail"]
    assert not list((tmp_path / "out" / "data").glob("part-000-*"))  # flushed shards of it were removed


def test_special_entries_are_quarantined_without_being_opened(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    one_good_file(src)
    os.mkfifo(src / "pipe.jsonl")  # opening it would block for ever
    (src / "gone.jsonl").symlink_to(tmp_path / "nowhere.jsonl")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(src / "sock.jsonl"))
    try:
        ledger, rows, rejects = run(tmp_path, src)
    finally:
        sock.close()
    assert ledger.kept == 30 and ledger.dropped == {"special_file": 2, "dangling_link": 1}
    by_path = {r["location"]: r["reject_reason"] for r in rejects}
    assert by_path == {str(src / "pipe.jsonl"): "special_file", str(src / "sock.jsonl"): "special_file",
                       str(src / "gone.jsonl"): "dangling_link"}


def test_unreadable_entry_is_quarantined(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    one_good_file(src)
    loop = src / "loop.jsonl"
    loop.symlink_to(loop)  # stat fails with ELOOP, whoever runs the test
    unreadable = {str(loop)}
    if os.geteuid() != 0:  # root reads files without read permission
        locked = src / "locked.jsonl"
        locked.write_bytes(GOOD)
        locked.chmod(0)
        unreadable.add(str(locked))
    ledger, _, rejects = run(tmp_path, src)
    assert ledger.kept == 30 and ledger.dropped == {"unreadable_file": len(unreadable)}
    assert {r["location"] for r in rejects} == unreadable


def test_fail_policy_stops_at_the_first_bad_file_naming_it(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    one_good_file(src)
    (src / "bad.jsonl.gz").write_bytes(b"not gzip")
    with pytest.raises(SourceError, match="bad.jsonl.gz") as err:
        run(tmp_path, src, unreadable_files="fail")
    assert err.value.exit_code == 6 and "corrupt_file" in str(err.value)


# ------------------------------------------------------------------ per record

def test_pretty_printed_array_in_a_jsonl_file_counts_records_not_lines(tmp_path):
    rows = [{"messages": CHAT, "k": i} for i in range(5)]
    (tmp_path / "pretty.jsonl").write_text(json.dumps(rows, indent=2))
    ledger, kept, _ = run(tmp_path, tmp_path / "pretty.jsonl")
    assert (ledger.n_in, ledger.kept) == (5, 5) and [json.loads(r["meta"])["k"] for r in kept] == list(range(5))


def test_truncated_array_keeps_the_elements_before_the_cut(tmp_path):
    text = json.dumps([{"messages": CHAT, "k": i} for i in range(6)], indent=2)
    (tmp_path / "cut.json").write_text(text[: text.index('"k": 5')])
    ledger, kept, rejects = run(tmp_path, tmp_path / "cut.json")
    assert ledger.kept == 5 and ledger.dropped == {"invalid_json": 1} and rejects[0]["location"].endswith("#5")


def test_concatenated_pretty_objects_are_one_record_each(tmp_path):
    (tmp_path / "objs.jsonl").write_text("\n".join(json.dumps({"messages": CHAT, "k": i}, indent=2) for i in range(3)))
    ledger, kept, _ = run(tmp_path, tmp_path / "objs.jsonl")
    assert (ledger.n_in, ledger.kept) == (3, 3)


def test_unterminated_csv_quote_costs_one_line_not_the_rest_of_the_file(tmp_path):
    lines = ["instruction,output", '"Broken quote,answer'] + [f"Question {i},Answer {i}" for i in range(8)]
    (tmp_path / "q.csv").write_text("\n".join(lines) + "\n")
    ledger, kept, rejects = run(tmp_path, tmp_path / "q.csv")
    assert ledger.kept == 8 and ledger.dropped == {"unbalanced_quote": 1}
    assert "line 2" in rejects[0]["reject_detail"]
    assert [r["messages"][0]["content"] for r in kept] == [f"Question {i}" for i in range(8)]


def test_quoted_multiline_csv_field_is_one_record(tmp_path):
    with open(tmp_path / "m.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["instruction", "output"])
        w.writerow(["Write two lines.", "Line one,\nline two."])
        w.writerow(["Say hi.", "Hi!"])
    ledger, kept, _ = run(tmp_path, tmp_path / "m.csv")
    assert (ledger.n_in, ledger.kept) == (2, 2) and kept[0]["messages"][1]["content"] == "Line one,\nline two."


def test_csv_cell_past_the_csv_modules_default_limit(tmp_path):
    big = "x" * 200_000  # the csv module's default field limit is 131,072 characters
    (tmp_path / "big.csv").write_text(f"instruction,output\nLong answer please,{big}\nShort,ok\n")
    ledger, kept, _ = run(tmp_path, tmp_path / "big.csv")
    assert ledger.kept == 2 and kept[0]["messages"][1]["content"] == big
    ledger, _, rejects = run(tmp_path, tmp_path / "big.csv", max_record_bytes=100_000)
    assert ledger.kept == 1 and ledger.dropped == {"oversize": 1}


# ------------------------------------------------------------------ export quirks

@pytest.mark.parametrize("name,body", [
    ("bom.jsonl", GOOD[:0] + b"".join(json.dumps({"messages": CHAT, "k": i}).encode() + b"\n" for i in range(3))),
    ("bom.json", json.dumps([{"messages": CHAT, "k": i} for i in range(3)], indent=1).encode()),
    ("bom.csv", b"instruction,output,k\r\n" + b"".join(f"Q{i},A{i},{i}\r\n".encode() for i in range(3))),
])
def test_utf8_bom_is_dropped(tmp_path, name, body):
    (tmp_path / name).write_bytes(b"\xef\xbb\xbf" + body)
    ledger, kept, _ = run(tmp_path, tmp_path / name)
    assert (ledger.n_in, ledger.kept) == (3, 3)
    assert [str(json.loads(r["meta"])["k"]) for r in kept] == ["0", "1", "2"]


def test_nan_and_infinite_ratings_read_as_missing(tmp_path):
    ann = [{"annotator_id": "a", "rating": float("nan")}, {"annotator_id": "b", "rating": float("inf")},
           {"annotator_id": "c", "rating": 4}]
    (tmp_path / "r.jsonl").write_text(json.dumps({"messages": CHAT, "annotations": ann}) + "\n")  # NaN, Infinity
    ledger, kept, _ = run(tmp_path, tmp_path / "r.jsonl")
    assert ledger.kept == 1 and [a["rating"] for a in kept[0]["annotations"]] == [None, None, 4.0]


def test_role_whitespace_and_case_and_message_weights(tmp_path):
    row = {"conversations": [{"from": "human ", "value": "Hi"}, {"from": "GPT", "value": "Hello", "weight": 0},
                             {"from": "human", "value": "More?"}, {"from": "gpt", "value": "Sure.", "weight": 1}]}
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jsonl").write_text(json.dumps(row) + "\n")
    (src / "b.jsonl").write_text(json.dumps({"messages": [CHAT[0], {**CHAT[1], "weight": "heavy"}]}) + "\n")
    ledger, kept, rejects = run(tmp_path, src)
    assert ledger.dropped == {"wrong_type": 1} and "weight" in rejects[0]["reject_detail"]
    msgs = read_table(tmp_path / "out" / "data").to_pylist()[0]["messages"]
    assert [(m["role"], m["weight"]) for m in msgs] == [("user", None), ("assistant", 0.0), ("user", None),
                                                         ("assistant", 1.0)]


def test_integer_and_string_ids_do_not_collide(tmp_path):
    (tmp_path / "ids.jsonl").write_text("".join(json.dumps({"id": i, "messages": CHAT}) + "\n" for i in (7, "7", 7.0)))
    ledger, kept, _ = run(tmp_path, tmp_path / "ids.jsonl")
    assert ledger.kept == 2 and ledger.dropped == {"duplicate_id": 1}  # 7.0 is pandas' spelling of 7
    assert {r["id"] for r in kept} == {record_id("t", 7), record_id("t", "7")}


def test_mixed_directory_gets_a_preset_per_file(tmp_path):
    src = tmp_path / "mixed"
    src.mkdir()
    (src / "a.jsonl").write_bytes(GOOD[: GOOD.index(b"\n") + 1])
    (src / "b.json").write_text(json.dumps([{"instruction": "Add 1 and 1.", "output": "2"}]))
    (src / "c.csv").write_text("prompt,completion\nCapital of Peru?,Lima.\n")
    (src / "d.txt").write_text("A plain document.\n")
    ledger, kept, _ = run(tmp_path, src)
    assert (ledger.n_in, ledger.kept) == (4, 4)
    files = {Path(f["file"]).name: f["format"] for f in ledger.extra["sources"][0]["file_formats"]}
    assert files == {"a.jsonl": "messages", "b.json": "alpaca", "c.csv": "prompt_completion", "d.txt": "text"}
    assert ledger.extra["sources"][0]["format"].startswith("mixed:")


def test_rating_scale_quarantines_out_of_scale_ratings(tmp_path):
    rows = [{"messages": CHAT, "annotations": [{"annotator_id": "a", "rating": r}]} for r in (1, 5, 11, -3)]
    (tmp_path / "s.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ledger, kept, rejects = run(tmp_path, tmp_path / "s.jsonl", src={"rating_scale": [1, 5]})
    assert ledger.kept == 2 and ledger.dropped == {"rating_out_of_scale": 2}
    assert all(json.loads(r["meta"])["rating_scale"] == [1, 5] for r in kept)
    assert "outside the source's rating_scale [1, 5]" in rejects[0]["reject_detail"]


def test_misnamed_rating_key_is_warned_about_naming_the_config_key(tmp_path, caplog):
    (tmp_path / "m.jsonl").write_text(json.dumps({"messages": CHAT, "annotations": [{"annotator_id": "a",
                                                                                       "score": 4}]}) + "\n")
    ledger, kept, _ = run(tmp_path, tmp_path / "m.jsonl")
    assert kept[0]["annotations"][0]["rating"] is None
    assert "annotation_map" in caplog.text and "score (in annotations)=1" in caplog.text
    assert ledger.extra["sources"][0]["unmapped_annotation_keys"] == {"score (in annotations)": 1}


def test_parquet_with_nan_ratings_and_int_ids(tmp_path):
    table = pa.table({"id": [1, 2], "instruction": ["a", "b"], "output": ["c", "d"],
                      "score": [float("nan"), 4.0]})
    pq.write_table(table, tmp_path / "p.parquet")
    ledger, kept, _ = run(tmp_path, tmp_path / "p.parquet", src={"annotation_map": {"ratings": "score"}})
    assert ledger.kept == 2 and [r["annotations"][0]["rating"] for r in kept] == [None, 4.0]


def test_min_rating_on_the_normalized_scale_across_sources(tmp_path):
    """Two real sources, rated 1-5 and 0-100: one normalized threshold judges both alike."""
    from schemas.filters import FilterSpec
    from tasks.filters import FilterBatch, build_chain

    for name, ratings in (("five", [2, 4, 5]), ("hundred", [30, 75, 100])):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(
            {"messages": CHAT, "annotations": [{"annotator_id": "a", "rating": r}]}) + "\n" for r in ratings))
    srcs = [{"name": "five", "path": str(tmp_path / "five.jsonl"), "rating_scale": [1, 5]},
            {"name": "hundred", "path": str(tmp_path / "hundred.jsonl"), "rating_scale": [0, 100]},
            {"name": "plain", "path": str(tmp_path / "five.jsonl")}]
    ingest(IngestConfig(sources=srcs), tmp_path / "out")
    table = read_table(tmp_path / "out" / "data")
    ((_, fn),) = build_chain([FilterSpec(name="min_rating", params={"threshold": 0.7, "scale": "normalized"})])
    result = fn(FilterBatch(table))
    kept = [(s, a[0]["rating"]) for s, a, k in zip(table["source"].to_pylist(), table["annotations"].to_pylist(),
                                                   result.keep, strict=True) if k]
    assert kept == [("five", 4.0), ("five", 5.0), ("hundred", 75.0), ("hundred", 100.0)]
    reasons = {r for r, k in zip(result.reasons, result.keep, strict=True) if not k}
    assert reasons == {"low_rating", "no_rating_scale"}
