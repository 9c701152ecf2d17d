"""Side-by-side dedup benchmark: quality against exact-Jaccard truth, whole-process time and peak memory.

Each tool runs as its own process on the same JSONL corpus (start-up and imports included); the tools
alternate, ``--repeat`` times, and the median is reported, since other work shares this machine.

    python bench/dedup/bench.py --corpus /tmp/syn.jsonl --truth /tmp/syn.truth.json --name synthetic \
        --tools peftpipe,datasketch,datatrove,text-dedup --repeat 3 --out bench/dedup/results.json

Tools: peftpipe (``peftpipe dedup``, 2 workers), datasketch (bench/dedup/datasketch.py: MinHash.bulk,
LeanMinHash, an LSH insertion session), datatrove (bench/dedup/datatrove.py, .venv-bench), text-dedup
(``python -m text_dedup.minhash``, .venv-bench).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from bench.process_tree import tree_rss  # noqa: E402

MAIN_PY = str(ROOT / ".venv" / "bin" / "python")
BENCH_PY = str(ROOT / ".venv-bench" / "bin" / "python")


def measure(cmd: list[str], cwd: Path) -> dict:
    """Run cmd; wall seconds, CPU seconds of the whole process tree, peak summed RSS of the tree."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    root = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(root))
        time.sleep(0.05)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = proc.stdout.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed ({proc.returncode}):\n{out[-3000:]}")
    return {"wall_s": round(wall, 2), "cpu_s": round((after.ru_utime - before.ru_utime) +
                                                       (after.ru_stime - before.ru_stime), 2),
            "peak_rss_mb": round(peak / 2**20), "tail": out.strip().splitlines()[-1:] if out.strip() else []}


def flagged_peftpipe(out: Path) -> set[str]:
    import pyarrow.parquet as pq

    table = pq.read_table(out / "map.parquet", columns=["id", "cluster_size"]).to_pydict()
    return {i for i, s in zip(table["id"], table["cluster_size"], strict=True) if s > 1}


def flagged_json(out: Path) -> set[str]:
    return set(json.loads((out / "result.json").read_text())["duplicates"])


def tool_command(tool: str, corpus: Path, out: Path, workers: int) -> tuple[list[str], callable]:
    if tool == "peftpipe":
        return ([MAIN_PY, "-m", "flows.cli", "dedup", str(corpus), "--text-field", "text", "--id-field", "id",
                 "--threshold", "0.8", "--out", str(out / "map.parquet"), "--workers", str(workers)],
                flagged_peftpipe)
    if tool == "datasketch":
        return ([MAIN_PY, str(ROOT / "bench" / "dedup/datasketch.py"), str(corpus), "--out",
                 str(out / "result.json")], flagged_json)
    if tool == "datatrove":
        return ([BENCH_PY, str(ROOT / "bench" / "dedup/datatrove.py"), str(corpus), "--work", str(out / "dt"),
                 "--workers", str(workers), "--out", str(out / "result.json")], flagged_json)
    if tool == "text-dedup":
        return ([BENCH_PY, str(ROOT / "bench" / "dedup/textdedup.py"), str(corpus), "--work", str(out / "td"),
                 "--workers", str(workers), "--out", str(out / "result.json")], flagged_json)
    raise ValueError(tool)


def quality(flagged: set[str], truth: set[str]) -> dict:
    tp = len(flagged & truth)
    p = tp / len(flagged) if flagged else 1.0
    r = tp / len(truth) if truth else 1.0
    return {"precision": round(p, 4), "recall": round(r, 4), "f1": round(2 * p * r / (p + r) if p + r else 0, 4),
            "flagged": len(flagged), "true_duplicates": len(truth)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--truth", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--tools", default="peftpipe,datasketch")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "bench" / "dedup/results.json"))
    args = ap.parse_args()
    corpus = Path(args.corpus).resolve()
    truth_doc = json.loads(Path(args.truth).read_text())
    truth = set(truth_doc["duplicates"])
    docs = truth_doc["docs"]
    runs: dict[str, list[dict]] = {t: [] for t in args.tools.split(",")}
    for rep in range(args.repeat):
        for tool in runs:  # alternate the tools, so drifting machine load hits each alike
            out = Path(tempfile.mkdtemp(prefix=f"dedup-{tool}-"))
            cmd, reader = tool_command(tool, corpus, out, args.workers)
            load = os.getloadavg()[0]
            run = measure(cmd, ROOT)
            run.update(quality(reader(out), truth), load_avg_1m=round(load, 1), repeat=rep)
            runs[tool].append(run)
            print(f"{tool:11s} rep {rep}: {run['wall_s']:7.1f}s wall {run['cpu_s']:7.1f}s cpu "
                  f"{run['peak_rss_mb']:6d} MB  P={run['precision']} R={run['recall']} F1={run['f1']} "
                  f"(load {load:.1f})", flush=True)
            shutil.rmtree(out, ignore_errors=True)
    summary = {}
    for tool, rs in runs.items():
        wall = statistics.median(r["wall_s"] for r in rs)
        cpu = statistics.median(r["cpu_s"] for r in rs)
        summary[tool] = {"docs_per_s": round(docs / wall), "docs_per_cpu_s": round(docs / cpu),
                         "wall_s": wall, "cpu_s": cpu, "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
                         **{k: rs[-1][k] for k in ("precision", "recall", "f1", "flagged", "true_duplicates")}}
    result = {"corpus": args.name, "path": str(corpus), "docs": docs, "threshold": truth_doc["threshold"],
              "truth_duplicate_share": truth_doc["duplicate_share"], "machine": f"{os.cpu_count()} cores, "
              f"{round(psutil.virtual_memory().total / 2**30)} GiB", "workers": args.workers,
              "python": sys.version.split()[0], "summary": summary, "runs": runs}
    path = Path(args.out)
    existing = json.loads(path.read_text()) if path.exists() else {}
    existing[args.name] = result
    path.write_text(json.dumps(existing, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
