"""Reference: text-dedup 0.4's MinHash (``python -m text_dedup.minhash``), run as its command line does.

Its own LSH parameters for the threshold (datasketch-style optimizer), 128 permutations, word 5-grams. The
union-find it dumps with ``--debug`` gives the clusters; a document is flagged when its cluster has two or
more members. Run with .venv-bench.

    .venv-bench/bin/python bench/dedup/textdedup.py /tmp/syn.jsonl --work /tmp/td --out /tmp/td.json
"""
from __future__ import annotations

import argparse
import json
import pickle
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("corpus")
    ap.add_argument("--work", required=True)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    started = time.time()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "text_dedup.minhash", "--path", "json", "--data_files", args.corpus,
                    "--split", "train", "--cache_dir", str(work / "cache"), "--output", str(work / "out"),
                    "--column", "text", "--idx_column", "id", "--threshold", "0.8", "--num_perm", "128",
                    "--ngram", "5", "--min_length", "0", "--num_proc", str(args.workers), "--debug"],
                   check=True, stdout=subprocess.DEVNULL)
    with open(work / "out" / "uf.pkl", "rb") as fh:
        uf = pickle.load(fh)
    roots = {i: uf.find(i) for i in list(uf.parent)}
    size = Counter(roots.values())
    flagged = sorted(str(i) for i, r in roots.items() if size[r] > 1)
    json.dump({"tool": "text-dedup", "docs": None, "duplicates": flagged,
               "seconds": round(time.time() - started, 2)}, open(args.out, "w"))
    print(f"text-dedup: {len(flagged)} flagged")


if __name__ == "__main__":
    main()
