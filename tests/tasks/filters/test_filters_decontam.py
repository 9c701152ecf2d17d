"""Decontamination: 13-gram overlap with eval sets, per-source hits, threshold, input formats."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from schemas.filters import FilterSpec
from schemas.record import RECORD_SCHEMA
from tasks.filters import FilterBatch, build_chain
from tasks.filters.decontam import ngram_hashes, read_eval_texts

EVAL_Q = ("Natalia sold clips to 48 of her friends in April and then she sold half as many clips in May "
          "how many clips did Natalia sell altogether")


def batch_of(*responses):
    rows = [{"id": f"r{i}", "source": "s", "meta": "{}", "annotations": [],
             "messages": [{"role": "user", "content": "Solve this."}, {"role": "assistant", "content": r}]}
            for i, r in enumerate(responses)]
    return FilterBatch(pa.Table.from_pylist(rows, RECORD_SCHEMA))


def test_ngram_hashes_do_not_cross_texts():
    grams, owner = ngram_hashes(["a b c", "d e", "f g h i"], 3)
    assert owner.tolist() == [0, 2, 2]
    again, _ = ngram_hashes(["x A b C y", "f g h i"], 3)
    assert grams[0] == again[1]                       # case-insensitive, same words -> same hash
    assert len(np.unique(grams)) == 3


def test_drops_13_gram_overlap_and_counts_per_source(tmp_path):
    gsm = tmp_path / "gsm.jsonl"
    gsm.write_text(json.dumps({"question": EVAL_Q, "answer": "72"}) + "\n")
    other = tmp_path / "other.txt"
    other.write_text("a completely different benchmark sentence about the colour of the sky at noon today\n")
    words = EVAL_Q.split()
    b = batch_of(
        "Here is a problem: " + " ".join(words[:13]) + " and more.",   # exactly 13 shared words -> hit
        "Here is a problem: " + " ".join(words[:12]) + " and more.",   # 12 shared words -> no 13-gram
        "NATALIA sold clips to 48 of her friends in April, and then she sold half as many!",  # case/punct
        "Nothing to see here at all.")
    spec = FilterSpec(name="decontaminate", params={"sources": {"gsm8k": str(gsm), "other": str(other)}})
    (_, fn), = build_chain([spec])
    res = fn(b)
    assert res.keep.tolist() == [False, True, False, True]
    assert res.reason(0) == "contaminated:gsm8k"
    assert res.detail(0).startswith("13-gram overlap=1/")
    assert res.stats == {"decontam_records_hit:gsm8k": 2, "decontam_records_hit:other": 0}


def test_min_overlap_threshold(tmp_path):
    src = tmp_path / "eval.txt"
    src.write_text(EVAL_Q + "\n")
    long_answer = " ".join(EVAL_Q.split()[:13]) + " " + " ".join(f"w{i}" for i in range(100))
    (_, strict), = build_chain([FilterSpec(name="decontaminate", params={"sources": {"e": str(src)}})])
    (_, loose), = build_chain([FilterSpec(name="decontaminate",
                                          params={"sources": {"e": str(src)}, "min_overlap": 0.5})])
    assert strict(batch_of(long_answer)).keep.tolist() == [False]   # any shared 13-gram
    assert loose(batch_of(long_answer)).keep.tolist() == [True]     # 1 of 101 n-grams < 50%
    assert loose(batch_of(EVAL_Q)).keep.tolist() == [False]         # the whole question


def test_reads_parquet_and_messages_and_rejects_unknown_formats(tmp_path):
    path = tmp_path / "eval.parquet"
    pq.write_table(pa.Table.from_pylist([{"messages": [{"role": "user", "content": "hi there"}], "n": 1}]), path)
    assert read_eval_texts(path) == ["hi there"]
    bad = tmp_path / "eval.csv"
    bad.write_text("x")
    with pytest.raises(ValueError, match="unsupported format"):
        read_eval_texts(bad)
    with pytest.raises(FileNotFoundError):
        read_eval_texts(tmp_path / "missing.jsonl")
