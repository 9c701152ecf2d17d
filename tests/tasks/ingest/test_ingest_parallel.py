"""Splitting a big JSON-lines file over worker processes gives exactly the sequential result."""
from __future__ import annotations

import json

from schemas.ingest import IngestConfig
from tasks.core.stage import read_table
from tasks.ingest.parallel import split_points
from tasks.ingest.stage import ingest


def lines(n: int) -> bytes:
    out = []
    for i in range(n):
        if i % 17 == 5:
            out.append(b'{"broken": ')
        elif i % 29 == 3:
            out.append(b"")
        elif i % 3 == 0:  # rows with ids; every 11th repeats an id from much earlier (another chunk)
            rid = f"r{i // 33}" if i % 11 == 0 else f"r{i}"
            out.append(json.dumps({"id": rid, "messages": [{"role": "user", "content": f"q{i}"},
                                                           {"role": "assistant", "content": "a"}]}).encode())
        else:  # id-less rows whose contents repeat all over the file
            out.append(json.dumps({"messages": [{"role": "user", "content": f"same {i % 7}"},
                                                {"role": "assistant", "content": "a"}]}).encode())
    return b"\n".join(out)  # no newline at the end: the last line still counts


def run(tmp_path, name, workers):
    cfg = IngestConfig(sources=[{"name": "big", "path": str(tmp_path / "big.jsonl")}], shard_rows=40,
                       workers=workers, parallel_min_bytes=1)
    ledger = ingest(cfg, tmp_path / name)
    data = read_table(tmp_path / name / "data").select(["id", "messages", "meta"]).to_pylist()
    rejects = read_table(tmp_path / name / "rejects").select(["location", "reject_reason"]).to_pylist()
    return ledger, data, sorted(rejects, key=lambda r: int(r["location"].rsplit(":", 1)[1]))


def test_parallel_equals_sequential(tmp_path):
    (tmp_path / "big.jsonl").write_bytes(lines(600))
    seq_ledger, seq_data, seq_rejects = run(tmp_path, "seq", workers=1)
    par_ledger, par_data, par_rejects = run(tmp_path, "par", workers=3)
    assert seq_ledger.dropped["duplicate_id"] > 0 and seq_ledger.dropped["invalid_json"] > 0
    assert (par_ledger.n_in, par_ledger.kept, par_ledger.dropped) == \
        (seq_ledger.n_in, seq_ledger.kept, seq_ledger.dropped)
    assert seq_ledger.n_in == 600
    assert par_data == seq_data  # same ids, same order
    assert par_rejects == seq_rejects  # same line numbers, same reasons
    assert par_ledger.extra["sources"][0]["digest"] == seq_ledger.extra["sources"][0]["digest"]
    assert len({r["id"] for r in par_data}) == len(par_data)


def test_split_points_are_line_starts(tmp_path):
    blob = b"".join(b"x" * (i % 13) + b"\n" for i in range(500))
    (tmp_path / "f").write_bytes(blob)
    points = split_points(str(tmp_path / "f"), 7)
    assert points[0] == 0 and points[-1] == len(blob) and points == sorted(set(points))
    assert all(blob[p - 1:p] == b"\n" for p in points[1:-1])


def test_split_and_in_process_files_of_one_source_reconcile(tmp_path):
    d = tmp_path / "src"
    d.mkdir()
    small = [json.dumps({"id": f"r{i}", "messages": [{"role": "user", "content": "x"},
                                                     {"role": "assistant", "content": "y"}]}) for i in range(5)]
    (d / "a.jsonl").write_text("\n".join(small) + "\n")
    (d / "b.jsonl").write_bytes(lines(400))  # big: split; repeats ids r0..r4 from a.jsonl
    (d / "c.jsonl").write_text("\n".join(small[:2] + ['{"messages": [{"role": "user", "content": "same 1"}, '
                                                      '{"role": "assistant", "content": "a"}]}']) + "\n")
    results = []
    for workers in (1, 2):
        cfg = IngestConfig(sources=[{"name": "mix", "path": str(d)}], shard_rows=30, workers=workers,
                           parallel_min_bytes=1000)
        ledger = ingest(cfg, tmp_path / f"w{workers}")
        data = read_table(tmp_path / f"w{workers}" / "data").select(["id", "messages"]).to_pylist()
        rejects = sorted((r["location"], r["reject_reason"])
                         for r in read_table(tmp_path / f"w{workers}" / "rejects").to_pylist())
        results.append((ledger.n_in, ledger.kept, dict(ledger.dropped), data, rejects))
    assert results[0] == results[1]
    assert any(loc.endswith("c.jsonl:1") and reason == "duplicate_id" for loc, reason in results[0][4])
