"""Banding: grouping (band key, doc) pairs into buckets. peftpipe's one numpy sort (tasks.dedup.lsh.bucket_members)
against pyarrow's hash group-by with list aggregation (what it replaced), on the same keys, each in a fresh
forked process: CPU time and peak RSS above the process's RSS once the keys are in memory.

    python bench/dedup/banding.py --keys 16000000
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def make_keys(n: int, shared: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """n random 64-bit keys of which about ``shared`` repeat another key (as near-duplicates share bands)."""
    rng = np.random.default_rng(0)
    keys = np.empty(n, np.uint64)
    for lo in range(0, n, 1 << 20):
        hi = min(n, lo + (1 << 20))
        keys[lo:hi] = rng.integers(0, 2**63, hi - lo, dtype=np.int64).astype(np.uint64)
    dup = rng.integers(0, n, int(n * shared))
    keys[dup] = keys[rng.integers(0, n, len(dup))]
    return keys, np.arange(n, dtype=np.int64)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run(method: str, n: int, out: mp.Queue) -> None:
    keys, docs = make_keys(n)
    base = rss_mb()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
    t = time.process_time()
    if method == "numpy-sort":
        from tasks.dedup.lsh import bucket_members
        members, sizes = bucket_members(keys, docs)
        buckets = len(sizes)
    else:
        import pyarrow as pa
        import pyarrow.compute as pc
        table = pa.table({"key": keys, "idx": docs})
        grouped = table.group_by("key", use_threads=False).aggregate([("idx", "list")])
        lists = grouped.column("idx_list").combine_chunks()
        buckets = int(pc.sum(pc.greater(pc.list_value_length(lists), 1)).as_py())
    cpu = time.process_time() - t
    with open("/proc/self/status") as f:
        hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
    out.put({"method": method, "keys": n, "cpu_s": round(cpu, 2), "peak_above_keys_mb": round(hwm - base),
             "bytes_per_key": round((hwm - base) * 2**20 / n, 1), "buckets_2plus": buckets})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=16_000_000)
    args = ap.parse_args()
    ctx = mp.get_context("fork")
    results = []
    for method in ("numpy-sort", "pyarrow-group-by"):
        q = ctx.Queue()
        p = ctx.Process(target=run, args=(method, args.keys, q))
        p.start()
        results.append(q.get())
        p.join()
        print(json.dumps(results[-1]), flush=True)


if __name__ == "__main__":
    main()
