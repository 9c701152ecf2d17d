"""Exact-Jaccard ground truth for the dedup benchmarks: every pair of documents with J >= t, found without
any hashing approximation (all-pairs with prefix and length filtering, then set intersection).

A document is a true duplicate when some other document has Jaccard >= t with it (word 5-grams of the
lower-cased text with Unicode punctuation and symbols removed, the normalization every tool is given).

    python bench/dedup/truth.py /tmp/syn.jsonl --out /tmp/syn.truth.json
"""
from __future__ import annotations

import argparse
import json
import math
import time
import unicodedata
from pathlib import Path

import numpy as np
import xxhash

# Unicode punctuation and symbols -> space; str.translate, since a regex class this big is ~1000x slower.
_PUNCT = {c: " " for c in range(0x110000) if unicodedata.category(chr(c))[0] in "PS"}


def shingles(text: str, n: int = 5) -> set[int]:
    """The doc's distinct word n-grams, each as a 64-bit xxh3 of its words (collisions: ~2^-64 per pair)."""
    words = unicodedata.normalize("NFKC", text).lower().translate(_PUNCT).split()
    if len(words) < n:
        grams = [" ".join(words)] if words else []
    else:
        grams = [" ".join(words[i:i + n]) for i in range(len(words) - n + 1)]
    return {xxhash.xxh3_64_intdigest(g.encode()) for g in grams}


def all_pairs(sets: list[set[int]], t: float) -> list[tuple[int, int, float]]:
    """Exact all pairs (i < j) with Jaccard >= t.

    Prefix filter (Bayardo et al. 2007): order every set's tokens by global frequency, rarest first; two sets
    with J >= t share a token among their first |s| - ceil(t|s|) + 1 tokens. So every pair sharing a prefix
    token is checked by exact set intersection, and no other pair can qualify.
    """
    arrays = [np.fromiter(s, dtype=np.uint64, count=len(s)) for s in sets]
    allt = np.concatenate(arrays) if arrays else np.zeros(0, np.uint64)
    allt = np.sort(allt)  # distinct tokens and their counts by sorting (numpy 2.4's hash np.unique crawls here)
    first = np.flatnonzero(np.concatenate([[True], allt[1:] != allt[:-1]])) if len(allt) else allt
    uniq, df = allt[first], np.diff(np.concatenate([first, [len(allt)]]))
    rows_tok, rows_doc = [], []
    for d, arr in enumerate(arrays):
        size = len(arr)
        if size == 0:
            continue
        freq = df[np.searchsorted(uniq, arr)]
        order = np.lexsort((arr, freq))
        prefix = size - math.ceil(t * size) + 1
        rows_tok.append(arr[order[:prefix]])
        rows_doc.append(np.full(prefix, d, dtype=np.int64))
    tok, doc = np.concatenate(rows_tok), np.concatenate(rows_doc)
    order = np.lexsort((doc, tok))
    tok, doc = tok[order], doc[order]
    starts = np.flatnonzero(np.concatenate([[True], tok[1:] != tok[:-1]]))
    ends = np.concatenate([starts[1:], [len(tok)]])
    candidates: set[tuple[int, int]] = set()
    for lo, hi in zip(starts[ends - starts > 1], ends[ends - starts > 1], strict=True):
        members = doc[lo:hi].tolist()
        for a in range(len(members)):
            for b in range(a + 1, len(members)):
                candidates.add((members[a], members[b]))
    pairs = []
    for i, j in candidates:
        a, b = sets[i], sets[j]
        if min(len(a), len(b)) < t * max(len(a), len(b)):
            continue
        inter = len(a & b)
        jac = inter / (len(a) + len(b) - inter)
        if jac >= t:
            pairs.append((i, j, jac))
    return pairs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("corpus", help="JSONL with id and text")
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    started = time.time()
    ids, sets = [], []
    with open(args.corpus) as fh:
        for line in fh:
            rec = json.loads(line)
            ids.append(str(rec["id"]))
            sets.append(shingles(rec["text"]))
    pairs = all_pairs(sets, args.threshold)
    dup = sorted({ids[i] for i, _, _ in pairs} | {ids[j] for _, j, _ in pairs})
    summary = {"corpus": args.corpus, "docs": len(ids), "threshold": args.threshold, "pairs": len(pairs),
               "duplicate_docs": len(dup), "duplicate_share": round(len(dup) / max(len(ids), 1), 4),
               "seconds": round(time.time() - started, 1), "duplicates": dup}
    Path(args.out).write_text(json.dumps(summary))
    print({k: v for k, v in summary.items() if k != "duplicates"})


if __name__ == "__main__":
    main()
