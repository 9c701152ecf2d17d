"""A source's files read as one task per part (the path a task runner takes) give the sequential read's
bytes: the same shards, quarantine, ids, lineage and digest, with duplicate ids across files reconciled."""
from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from schemas.ingest import IngestConfig
from tasks.ingest.stage import ingest
from tests.tasks.ingest.test_ingest_parallel import lines


def record(i: int, rid: str | None = None) -> dict:
    row = {"messages": [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"a{i}"}]}
    return {"id": rid, **row} if rid else row


def source_dir(root: Path) -> Path:
    src = root / "src"
    src.mkdir()
    (src / "a.jsonl").write_text("".join(json.dumps(record(i, f"r{i}")) + "\n" for i in range(30)))
    (src / "b.jsonl").write_text("".join(json.dumps(record(i, f"r{i % 40}")) + "\n" for i in range(30, 60))
                                 + "{broken\n")  # ids r30..r39, then r0..r19 again: duplicates of a.jsonl
    with gzip.open(src / "c.jsonl.gz", "wt") as f:  # a part of its own
        f.write("".join(json.dumps(record(i, f"r{i % 25}")) + "\n" for i in range(60, 90)))
    (src / "d.jsonl.gz").write_bytes(b"not gzip at all")  # quarantined whole
    pq.write_table(pa.Table.from_pylist([{"instruction": f"do {i}", "output": f"done {i}"} for i in range(20)]),
                   src / "e.parquet")
    (src / "f.jsonl").write_bytes(lines(400))  # big: split into byte ranges
    (src / "g.jsonl").write_text("".join(json.dumps(record(i)) + "\n" for i in range(5)))  # id-less repeats
    return src


def in_order(fn, items):
    """A Mapper that runs each task here, in order: the task-runner path without a runner."""
    return [fn(item) for item in items]


def in_reverse(fn, items):
    """A Mapper that finishes the tasks last to first: the merge must not depend on completion order."""
    return [fn(item) for item in reversed(items)][::-1]


def files_of(out: Path) -> dict[str, str]:
    return {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file()}


def test_files_read_as_tasks_equal_the_sequential_read(tmp_path):
    src = source_dir(tmp_path)
    cfg = IngestConfig(sources=[{"name": "s", "path": str(src)}], shard_rows=16, workers=2,
                       parallel_min_bytes=10_000)
    seq = ingest(cfg, tmp_path / "seq")
    assert seq.dropped["duplicate_id"] > 0 and seq.dropped["corrupt_file"] == 1 and seq.dropped["invalid_json"] > 0
    for name, mapper in (("mapped", in_order), ("reversed", in_reverse)):
        ledger = ingest(cfg, tmp_path / name, mapper=mapper)
        assert ledger.to_dict() == seq.to_dict(), name  # counts, lineage (files table, digest, schema) and all
        assert files_of(tmp_path / name) == files_of(tmp_path / "seq"), name
        assert not (tmp_path / name / "_groups").exists()
    info = seq.extra["sources"][0]
    assert info["n_files"] == 7 and [f["quarantined"] for f in info["file_formats"]].count("corrupt_file") == 1


def test_the_digest_follows_every_file(tmp_path):
    src = source_dir(tmp_path)
    cfg = IngestConfig(sources=[{"name": "s", "path": str(src)}], workers=2, parallel_min_bytes=10_000)
    before = ingest(cfg, tmp_path / "one", mapper=in_order).extra["sources"][0]["digest"]
    with gzip.open(src / "c.jsonl.gz", "at") as f:
        f.write(json.dumps(record(999)) + "\n")
    after = ingest(cfg, tmp_path / "two", mapper=in_order).extra["sources"][0]["digest"]
    assert before != after


def test_files_in_an_object_store_read_as_tasks_equal_the_sequential_read(tmp_path):
    """Each task opens its files by URL itself (the endpoint and credentials from the environment, as a
    runner's worker gets them), and the result is the sequential read's."""
    from tests.tasks.core.s3server import clear_clients, s3_server

    src = source_dir(tmp_path)
    with s3_server(("peftpipe-ingest",)) as s3:
        for path in sorted(src.iterdir()):
            s3.client().put_object(Bucket="peftpipe-ingest", Key=f"src/{path.name}", Body=path.read_bytes())
        cfg = IngestConfig(sources=[{"name": "s", "path": "s3://peftpipe-ingest/src"}], shard_rows=16)
        try:
            seq = ingest(cfg, tmp_path / "seq")
            mapped = ingest(cfg, tmp_path / "mapped", mapper=in_reverse)
        finally:
            clear_clients()
    assert mapped.to_dict() == seq.to_dict() and seq.n_in > 400
    assert files_of(tmp_path / "mapped") == files_of(tmp_path / "seq")
