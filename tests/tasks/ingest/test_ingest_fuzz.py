"""Property-based fuzz of the JSON-lines reader: random bytes and lines never crash ingest, and every line
read is either kept or quarantined."""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.ingest import IngestConfig
from tasks.core.stage import count_rows
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
        assert ledger.n_in == expected_lines
        assert ledger.kept >= sum(1 for x in lines if x == GOOD)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=3000))
def test_random_bytes_never_crash(blob):
    ingest_bytes(blob, max_record_bytes=64)
