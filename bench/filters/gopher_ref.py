"""Reference for bench/filters/bench.py: datatrove's GopherRepetitionFilter over the same response texts.

Runs in a separate environment that has datatrove (it needs spaCy and xxhash<4, which the project does not):

    python -m venv /tmp/dtvenv && /tmp/dtvenv/bin/pip install datatrove regex spacy pyarrow
    /tmp/dtvenv/bin/python bench/filters/gopher_ref.py --texts texts.parquet --out ref.json

Reads a Parquet file with a ``text`` column, times ``GopherRepetitionFilter().filter`` on every text (after one
warm-up call that loads the tokenizer) and writes the per-text decisions and the timing as JSON.
"""
from __future__ import annotations

import argparse
import json
import time

import pyarrow.parquet as pq
from datatrove.data import Document
from datatrove.pipeline.filters import GopherRepetitionFilter


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--texts", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    texts = pq.read_table(args.texts, columns=["text"]).column("text").to_pylist()
    f = GopherRepetitionFilter()
    f.filter(Document(text="warm up the tokenizer", id="w"))
    decisions = []
    t0, c0 = time.perf_counter(), time.process_time()
    for i, text in enumerate(texts):
        res = f.filter(Document(text=text, id=str(i)))
        decisions.append(None if res is True else res[1])
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    with open(args.out, "w") as fh:
        json.dump({"texts": len(texts), "seconds": wall, "cpu_s": cpu, "decisions": decisions}, fh)


if __name__ == "__main__":
    main()
