"""Reference: datasketch used well (MinHash.bulk, LeanMinHash, MinHashLSH with an insertion session).

Same shingles as the ground truth (word 5-grams of NFKC, lower-cased text without punctuation), datasketch's
default hashing (sha1_hash32) and its own LSH parameters for the threshold, no verification of candidates:
a document is reported as a duplicate when its LSH query returns another document.

    python bench/dedup/datasketch.py /tmp/syn.jsonl --out /tmp/syn.datasketch.json
"""
from __future__ import annotations

import argparse
import json
import time
import unicodedata

from datasketch import LeanMinHash, MinHash, MinHashLSH

# Unicode punctuation and symbols -> space (str.translate: a regex class this big is ~1000x slower).
_PUNCT = {c: " " for c in range(0x110000) if unicodedata.category(chr(c))[0] in "PS"}


def shingle_bytes(text: str, n: int = 5) -> list[bytes]:
    words = unicodedata.normalize("NFKC", text).lower().translate(_PUNCT).split()
    if len(words) < n:
        return [" ".join(words).encode()] if words else []
    return list({" ".join(words[i:i + n]).encode() for i in range(len(words) - n + 1)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("corpus")
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--num-perm", type=int, default=128)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    started = time.time()
    lsh = MinHashLSH(threshold=args.threshold, num_perm=args.num_perm)
    ids: list[str] = []
    sketches: list[LeanMinHash] = []

    def flush(batch_ids: list[str], batch_sh: list[list[bytes]]) -> None:
        with lsh.insertion_session() as session:
            for rid, mh in zip(batch_ids, MinHash.bulk(batch_sh, num_perm=args.num_perm), strict=True):
                lean = LeanMinHash(mh)
                session.insert(rid, lean)
                ids.append(rid)
                sketches.append(lean)

    batch_ids, batch_sh = [], []
    with open(args.corpus) as fh:
        for line in fh:
            rec = json.loads(line)
            batch_ids.append(str(rec["id"]))
            batch_sh.append(shingle_bytes(rec["text"]))
            if len(batch_ids) == args.batch:
                flush(batch_ids, batch_sh)
                batch_ids, batch_sh = [], []
    if batch_ids:
        flush(batch_ids, batch_sh)
    dup = sorted(rid for rid, mh in zip(ids, sketches, strict=True) if len(lsh.query(mh)) > 1)
    json.dump({"tool": "datasketch", "bands_rows": list(lsh.b and (lsh.b, lsh.r)), "docs": len(ids),
               "duplicates": dup, "seconds": round(time.time() - started, 2)}, open(args.out, "w"))
    print(f"datasketch: {len(ids)} docs, {len(dup)} flagged, b x r = {lsh.b} x {lsh.r}")


if __name__ == "__main__":
    main()
