"""Property-based fuzz of every reader: random lines, documents, CSV text, Parquet files and compressed files,
then damaged (cut short, a byte flipped, a BOM in front), never crash ingest, and every record read is either
kept or quarantined (the ledger balances against the shards written)."""
from __future__ import annotations

import bz2
import gzip
import json
import lzma
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.ingest import IngestConfig
from tasks.core.stage import count_rows
from tasks.ingest.readers import json_layout
from tasks.ingest.stage import IngestError, ingest

GOOD = json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}).encode()

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)
message = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "robot", 3, None]),
                                 "content": st.one_of(st.text(max_size=30), st.integers(), st.none())})
row = st.fixed_dictionaries({}, optional={
    "id": st.one_of(st.text(max_size=5), st.integers(), st.lists(st.integers(), max_size=2)),
    "messages": st.one_of(st.lists(message, max_size=4), json_values),
    "annotations": st.one_of(st.lists(st.fixed_dictionaries({}, optional={
        "annotator_id": json_values, "rating": json_values, "labels": json_values}), max_size=3), json_values),
    "meta": json_values})
line = st.one_of(
    st.binary(max_size=60).filter(lambda b: b"\n" not in b),
    row.map(lambda r: json.dumps(r).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.just(GOOD),
    row.map(lambda r: json.dumps(r).encode()[: len(json.dumps(r)) // 2]),  # truncated JSON
)


def ingest_bytes(blob: bytes, max_record_bytes: int = 400):
    tmp = Path(tempfile.mkdtemp())
    try:
        (tmp / "f.jsonl").write_bytes(blob)
        cfg = IngestConfig(sources=[{"name": "fuzz", "path": str(tmp / "f.jsonl")}], shard_rows=7,
                           max_record_bytes=max_record_bytes)
        try:
            ledger = ingest(cfg, tmp / "out")
        except IngestError as exc:  # only an input without any line at all may raise
            assert blob == b"", exc
            return None
        ledger.check()
        assert count_rows(tmp / "out" / "data") == ledger.kept
        assert count_rows(tmp / "out" / "rejects") == sum(ledger.dropped.values())
        return ledger
    finally:
        shutil.rmtree(tmp)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(line, max_size=12), st.booleans())
def test_random_lines_never_crash_and_add_up(lines, trailing_newline):
    blob = b"\n".join(lines) + (b"\n" if trailing_newline and lines else b"")
    ledger = ingest_bytes(blob)
    if ledger is not None:
        expected_lines = blob.count(b"\n") + (0 if blob.endswith(b"\n") else 1)
        if json_layout(blob, "f.jsonl") == "lines":  # one record per line
            assert ledger.n_in == expected_lines
            assert ledger.kept >= sum(1 for x in lines if x == GOOD)
        else:  # the first record spans lines (a pretty-printed document): records, not lines, are counted
            assert ledger.n_in > 0


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=3000))
def test_random_bytes_never_crash(blob):
    ingest_bytes(blob, max_record_bytes=64)


# ------------------------------------------------------------------ every reader, over file bytes

def ingest_file(blob: bytes, name: str, max_record_bytes: int = 400):
    """Ingest one file named ``name`` holding ``blob``: it may fail only as a source without rows, and the
    ledger must balance against the shards written."""
    tmp = Path(tempfile.mkdtemp())
    try:
        (tmp / name).write_bytes(blob)
        cfg = IngestConfig(sources=[{"name": "fuzz", "path": str(tmp / name)}], shard_rows=7,
                           max_record_bytes=max_record_bytes)
        try:
            ledger = ingest(cfg, tmp / "out")
        except IngestError as exc:
            assert "yields no rows" in str(exc), exc
            return None
        ledger.check()
        assert count_rows(tmp / "out" / "data") == ledger.kept
        assert count_rows(tmp / "out" / "rejects") == sum(ledger.dropped.values())
        return ledger
    finally:
        shutil.rmtree(tmp)


def _parquet(rows: list[dict]) -> bytes:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows) if rows else pa.table({"text": pa.array([], pa.string())}), buf)
    return buf.getvalue()


CSV_CHARS = st.text(alphabet=st.sampled_from(list('ab,;"\n\r\t é\x00\ufeff')), max_size=120)
csv_text = st.builds(lambda header, body: (header + body).encode("utf-8", errors="surrogateescape"),
                     st.sampled_from(["", "instruction,output\n", "prompt,completion,id\r\n", "\ufefftext\n"]),
                     CSV_CHARS)
jsonl_text = st.lists(line, max_size=8).map(lambda ls: b"\n".join(ls))
json_doc = st.one_of(st.lists(row, max_size=5).map(lambda rs: json.dumps(rs, indent=2).encode()),
                     jsonl_text)
parquet_rows = st.lists(st.fixed_dictionaries({"instruction": st.text(max_size=10), "output": st.text(max_size=10)},
                                              optional={"id": st.integers(-3, 3)}), max_size=5)
# How a file gets damaged on its way: not at all, cut short, one byte changed, or a BOM put in front.
damage = st.tuples(st.sampled_from(["none", "truncate", "flip", "bom"]), st.integers(0, 1 << 20))


def damaged(blob: bytes, how: tuple[str, int]) -> bytes:
    kind, at = how
    if kind == "truncate" and blob:
        return blob[: at % len(blob)]
    if kind == "flip" and blob:
        i = at % len(blob)
        return blob[:i] + bytes([blob[i] ^ 0xFF]) + blob[i + 1:]
    return b"\xef\xbb\xbf" + blob if kind == "bom" else blob


FILE_KINDS = {
    "f.jsonl": jsonl_text, "f.json": json_doc, "f.csv": csv_text, "f.tsv": csv_text.map(lambda b: b.replace(b",", b"\t")),
    "f.txt": st.binary(max_size=200), "f.parquet": parquet_rows.map(_parquet),
    "f.jsonl.gz": jsonl_text.map(gzip.compress), "f.csv.bz2": csv_text.map(bz2.compress),
    "f.json.xz": json_doc.map(lzma.compress),
}


@pytest.mark.parametrize("name", sorted(FILE_KINDS))
def test_every_reader_survives_damaged_files_and_balances(name):
    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(FILE_KINDS[name], damage, st.sampled_from([64, 400]))
    def check(blob, how, max_record_bytes):
        ingest_file(damaged(blob, how), name, max_record_bytes)

    check()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600), st.sampled_from(sorted(FILE_KINDS)))
def test_random_bytes_under_every_name(blob, name):
    ingest_file(blob, name)
