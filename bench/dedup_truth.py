"""Exact-Jaccard ground truth for the dedup benchmarks: every pair of documents with J >= t, found without
any hashing approximation (all-pairs with prefix and length filtering, then set intersection).

A document is a true duplicate when some other document has Jaccard >= t with it (word 5-grams of the
lower-cased text with Unicode punctuation and symbols removed, the normalization every tool is given).

    python bench/dedup_truth.py /tmp/syn.jsonl --out /tmp/syn.truth.json
"""
from __future__ import annotations

import argparse
import json
import math
import re
import time
import unicodedata
from collections import Counter, defaultdict
from pathlib import Path

_PUNCT = "".join(chr(c) for c in range(0x110000) if unicodedata.category(chr(c))[0] in "PS")
_PUNCT_RE = re.compile("[" + re.escape(_PUNCT) + "]+")


def shingles(text: str, n: int = 5) -> set[tuple[str, ...]]:
    words = _PUNCT_RE.sub(" ", unicodedata.normalize("NFKC", text).lower()).split()
    if len(words) < n:
        return {tuple(words)} if words else set()
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def all_pairs(sets: list[set], t: float) -> list[tuple[int, int, float]]:
    """Exact all pairs (i < j) with Jaccard >= t (Bayardo et al.'s prefix filter + length filter)."""
    df = Counter(tok for s in sets for tok in s)
    order = {tok: r for r, (tok, _) in enumerate(sorted(df.items(), key=lambda kv: (kv[1], kv[0])))}
    ranked = [sorted(order[tok] for tok in s) for s in sets]
    as_sets = [set(r) for r in ranked]
    by_size = sorted(range(len(sets)), key=lambda i: len(ranked[i]))
    index: dict[int, list[int]] = defaultdict(list)
    pairs = []
    for i in by_size:
        toks = ranked[i]
        size = len(toks)
        if size == 0:
            continue
        prefix = size - math.ceil(t * size) + 1
        seen: set[int] = set()
        for tok in toks[:prefix]:
            for j in index[tok]:
                if j in seen or len(ranked[j]) < t * size:
                    continue
                seen.add(j)
                inter = len(as_sets[i] & as_sets[j])
                jac = inter / (size + len(ranked[j]) - inter)
                if jac >= t:
                    pairs.append((min(i, j), max(i, j), jac))
            index[tok].append(i)
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
