"""Scale run of ``peftpipe dedup`` on synthetic ~1 KB documents (Parquet shards from dedup/corpus.py scale):
whole-process wall time, CPU time and the peak summed RSS of the process tree, per corpus size.

    python bench/dedup/scale.py /tmp/scale100k /tmp/scale1m [--memory-mb 1024 --unit-rows 20000 --runner auto]

Results are kept per (docs, memory_mb, unit_rows) in bench/dedup/scale_results.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import psutil
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.dedup.bench import MAIN_PY, ROOT, measure  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("corpora", nargs="+")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--memory-mb", type=int, default=1024)
    ap.add_argument("--unit-rows", type=int, default=20_000)
    ap.add_argument("--runner", default="auto", choices=["auto", "local", "processes", "ray"])
    ap.add_argument("--out", default=str(ROOT / "bench" / "dedup/scale_results.json"))
    args = ap.parse_args()
    path = Path(args.out)
    results = json.loads(path.read_text()) if path.exists() else {}
    for corpus in map(Path, args.corpora):
        docs = sum(pq.ParquetFile(p).metadata.num_rows for p in corpus.glob("*.parquet"))
        size_mb = round(sum(p.stat().st_size for p in corpus.glob("*.parquet")) / 2**20)
        out = Path(tempfile.mkdtemp(prefix="dedup-scale-", dir=os.environ.get("TMPDIR")))
        load = os.getloadavg()[0]
        run = measure([MAIN_PY, "-m", "flows.cli", "dedup", str(corpus), "--text-field", "text", "--id-field", "id",
                       "--threshold", "0.8", "--out", str(out / "map.parquet"), "--workers", str(args.workers),
                       "--set", f"memory_mb={args.memory_mb}", "--set", f"unit_rows={args.unit_rows}", "--runner", args.runner], ROOT)
        flagged = pq.read_table(out / "map.parquet", columns=["is_duplicate"]).column(0).to_numpy().sum()
        key = f"{docs} docs, memory_mb {args.memory_mb}, unit_rows {args.unit_rows}" + \
            (f", runner {args.runner}" if args.runner != "auto" else "")
        results[key] = {"docs": docs, "parquet_mb": size_mb, **run, "docs_per_s": round(docs / run["wall_s"]),
                              "docs_per_cpu_s": round(docs / run["cpu_s"]), "removed": int(flagged),
                              "load_avg_1m_at_start": round(load, 1), "workers": args.workers,
                              "memory_mb": args.memory_mb, "unit_rows": args.unit_rows, "runner": args.runner,
                              "machine": f"{os.cpu_count()} cores, {round(psutil.virtual_memory().total / 2**30)} GiB"}
        print(json.dumps(results[key]), flush=True)
        shutil.rmtree(out, ignore_errors=True)
        path.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
