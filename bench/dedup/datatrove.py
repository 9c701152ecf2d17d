"""Reference: datatrove 0.10's MinHash pipeline (signature -> buckets -> cluster -> filter), run locally.

The corpus is split into one JSONL file per worker first (datatrove parallelises by input file), and
``--bands/--rows`` default to datasketch's choice for threshold 0.8 (9 x 13), "tuned to 0.8". A document is
flagged when its cluster has two or more members. Run with .venv-bench (datatrove needs xxhash<4, spaCy).

    .venv-bench/bin/python bench/dedup/datatrove.py /tmp/syn.jsonl --work /tmp/dt --out /tmp/dt.json
"""
from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("corpus")
    ap.add_argument("--work", required=True)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--bands", type=int, default=9)
    ap.add_argument("--rows", type=int, default=13)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    started = time.time()
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.hashing import HashConfig

    work = Path(args.work)
    inp = work / "input"
    inp.mkdir(parents=True, exist_ok=True)
    lines = Path(args.corpus).read_text().splitlines(keepends=True)
    per = -(-len(lines) // args.workers)
    for w in range(args.workers):
        (inp / f"part{w}.jsonl").write_text("".join(lines[w * per:(w + 1) * per]))
    config = MinhashConfig(n_grams=5, num_buckets=args.bands, hashes_per_bucket=args.rows,
                           hash_config=HashConfig(precision=64))
    reader = JsonlReader(str(inp), glob_pattern="*.jsonl", compression=None)
    logs = str(work / "logs")
    stage1 = LocalPipelineExecutor(pipeline=[reader, MinhashDedupSignature(output_folder=str(work / "sigs"),
                                                                           config=config)],
                                   tasks=args.workers, workers=args.workers, logging_dir=f"{logs}/sigs")
    stage2 = LocalPipelineExecutor(pipeline=[MinhashDedupBuckets(input_folder=str(work / "sigs"),
                                                                 output_folder=str(work / "buckets"), config=config)],
                                   tasks=config.num_buckets, workers=args.workers, logging_dir=f"{logs}/buckets",
                                   depends=stage1)
    stage3 = LocalPipelineExecutor(pipeline=[MinhashDedupCluster(input_folder=str(work / "buckets"),
                                                                 output_folder=str(work / "remove"), config=config,
                                                                 save_cluster_size=True)],
                                   tasks=1, logging_dir=f"{logs}/clusters", depends=stage2)
    stage4 = LocalPipelineExecutor(pipeline=[reader, MinhashDedupFilter(
        input_folder=str(work / "remove"), load_cluster_sizes=True,
        exclusion_writer=JsonlWriter(str(work / "removed"), compression=None)),
        JsonlWriter(str(work / "kept"), compression=None)],
        tasks=args.workers, workers=args.workers, logging_dir=f"{logs}/filter", depends=stage3)
    stage4.run()
    flagged, docs = [], 0
    for path in list((work / "kept").glob("*.jsonl")) + list((work / "removed").glob("*.jsonl")):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt") as fh:
            for line in fh:
                rec = json.loads(line)
                docs += 1
                if rec.get("metadata", {}).get("minhash_cluster_size", 1) > 1:
                    flagged.append(str(rec["id"]))
    json.dump({"tool": "datatrove", "bands_rows": [args.bands, args.rows], "docs": docs,
               "duplicates": sorted(flagged), "seconds": round(time.time() - started, 2)}, open(args.out, "w"))
    print(f"datatrove: {docs} docs, {len(flagged)} flagged")


if __name__ == "__main__":
    main()
