"""Ingest throughput and peak memory on a generated JSONL of a given size, beside reference readers.

    .venv/bin/python bench/ingest/bench.py --gb 1.0 --out bench/ingest/results_1gb.json

Makes BIG.jsonl from the bundled sample's records (ids and one number per record changed so that every line
is distinct), with one malformed line in every 1,000, plus a clean copy without them for the references
(which stop at the first bad line). Each engine runs in its own process; peak RSS of the largest process
comes from wait4(), and the peak of all its processes together is sampled every 0.1 s with psutil.
Engines:
- peftpipe: ``tasks.ingest.stage.ingest`` (quarantine, ids, Parquet shards) on the file with bad lines, one worker
  process per core; peftpipe_1: the same in one process;
- python_json: the naive loop, ``json.loads`` per line into one Python list (clean copy);
- pyarrow_json: ``pyarrow.json.read_json`` of the whole file (clean copy);
- hf_datasets: ``datasets.load_dataset("json")`` into an Arrow cache (clean copy).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from bench.process_tree import tree_rss  # noqa: E402

BAD = [b'{"id": "bad", "messages": [', b"", b'{"id": "x", "messages": "not a list"}', b"\xff\xfe{}"]


def make_jsonl(path: Path, clean: Path, target_bytes: int, bad_every: int = 1000) -> dict:
    """Write ~target_bytes of JSONL; return line counts."""
    templates = []
    for line in (ROOT / "data" / "sample.jsonl").read_bytes().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and str(row.get("id", "")).startswith("s-") and \
                isinstance(row.get("annotations"), list) and isinstance(row.get("messages"), list):
            templates.append(row)
    n = bad = 0
    written = 0
    with open(path, "wb") as f, open(clean, "wb") as g:
        while written < target_bytes:
            t = templates[n % len(templates)]
            row = {"id": f"b-{n:09d}", "messages": [dict(m) for m in t["messages"]],
                   "annotations": t["annotations"], "meta": t["meta"]}
            row["messages"][0]["content"] += f" (case {n})"
            line = json.dumps(row, ensure_ascii=False).encode() + b"\n"
            f.write(line)
            g.write(line)
            written += len(line)
            n += 1
            if n % bad_every == 0:
                f.write(BAD[bad % len(BAD)] + b"\n")
                bad += 1
    return {"records": n, "bad_lines": bad, "bytes": path.stat().st_size, "clean_bytes": clean.stat().st_size}


def engine(name: str, path: Path, out: Path) -> dict:
    """Run one engine in this process and return what it counted."""
    if name.startswith("peftpipe"):  # peftpipe: one worker per core; peftpipe_1: in-process only
        from schemas.ingest import IngestConfig
        from tasks.ingest.stage import ingest
        workers = int(name.split("_")[1]) if "_" in name else 0
        ledger = ingest(IngestConfig(sources=[{"name": "bench", "path": str(path)}], workers=workers), out)
        return {"in": ledger.n_in, "kept": ledger.kept, "dropped": dict(ledger.dropped),
                "shards": len(list((out / "data").glob("*.parquet")))}
    if name == "python_json":
        rows = [json.loads(line) for line in open(path, "rb")]
        return {"kept": len(rows)}
    if name == "pyarrow_json":
        import pyarrow.json as pj
        return {"kept": pj.read_json(str(path)).num_rows}
    if name == "hf_datasets":
        import datasets
        datasets.disable_progress_bars()
        ds = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(out / "cache"))
        return {"kept": ds.num_rows}
    raise ValueError(name)


def wait_sampling_rss(proc: subprocess.Popen, every: float = 0.1) -> tuple[int, int, object]:
    """Wait for a process; return (peak of its and its children's summed RSS, exit status, rusage)."""
    import psutil

    peak = 0
    root = psutil.Process(proc.pid)
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            return peak, status, usage
        peak = max(peak, tree_rss(root))
        time.sleep(every)


def measure(name: str, path: Path, work: Path) -> dict:
    out = work / f"out-{name}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    with open(out / "stdout", "wb") as log:
        proc = subprocess.Popen([sys.executable, __file__, "--engine", name, "--file", str(path), "--work",
                                 str(out)], stdout=log, cwd=ROOT)
        tree_peak, status, usage = wait_sampling_rss(proc)
        proc.returncode = status
    seconds = time.perf_counter() - t0
    stdout = (out / "stdout").read_bytes()
    result = {"engine": name, "ok": status == 0, "seconds": round(seconds, 2),
              "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),  # the largest single process
              "peak_tree_rss_mib": round(tree_peak / 2**20, 1),  # all its processes together, sampled
              "mb_per_s": round(path.stat().st_size / 1e6 / seconds, 1),
              # CPU time of the engine and its workers: steadier than wall time on a shared machine
              "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2)}
    result["mb_per_cpu_s"] = round(path.stat().st_size / 1e6 / max(result["cpu_seconds"], 1e-9), 1)
    try:
        result.update(json.loads(stdout.decode().strip().splitlines()[-1]))
    except (ValueError, IndexError):
        result["error"] = stdout.decode()[-500:]
    if "kept" in result:
        result["records_per_s"] = round(result["kept"] / seconds)
    shutil.rmtree(out, ignore_errors=True)
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gb", type=float, default=1.0, help="size of the generated JSONL in GB")
    p.add_argument("--engines", default="peftpipe,peftpipe_1,python_json,pyarrow_json,hf_datasets")
    p.add_argument("--out", type=Path, default=None,
                   help="results JSON (default: bench/ingest/results_<size>.json, e.g. results_1gb.json, the "
                        "name bench/render.py reads into BENCHMARKS.md)")
    p.add_argument("--work", type=Path, default=None, help="scratch directory (default: a temp dir)")
    p.add_argument("--reuse", action="store_true", help="reuse the input generated earlier in --work")
    p.add_argument("--engine", help=argparse.SUPPRESS)
    p.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.engine:  # child process: run one engine, print its counts as the last line
        sys.path.insert(0, str(ROOT))
        print(json.dumps(engine(args.engine, args.file, args.work)))
        return 0
    work = args.work or Path(tempfile.mkdtemp(prefix="ingest-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        info_file = work / "input.json"
        if args.reuse and info_file.exists():  # the same generated input as an earlier run in --work
            info = json.loads(info_file.read_text())
        else:
            info = make_jsonl(work / "big.jsonl", work / "clean.jsonl", int(args.gb * 1e9))
            info["generate_seconds"] = round(time.perf_counter() - t0, 1)
            info_file.write_text(json.dumps(info))
        print(f"generated {info}", flush=True)
        results = []
        for name in args.engines.split(","):
            path = work / ("big.jsonl" if name.startswith("peftpipe") else "clean.jsonl")
            results.append(measure(name, path, work))
            print(json.dumps(results[-1]), flush=True)
        report = {"command": " ".join(["bench/ingest/bench.py"] + sys.argv[1:]), "input": info,
                  "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                              "python": platform.python_version(), "load_avg_at_end": os.getloadavg()},
                  "results": results}
        size = f"{args.gb:g}gb" if args.gb >= 1 else f"{round(args.gb * 1000)}mb"
        out = args.out or ROOT / "bench" / "ingest" / f"results_{size}.json"
        out.write_text(json.dumps(report, indent=2) + "\n")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
