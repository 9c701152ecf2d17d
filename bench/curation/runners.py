"""Curation (ingest -> exact dedup -> near dedup -> filters) of 1M records on 2 local Ray workers against
Prefect's process pool with 2 workers, in the same run; wall time and peak memory of each.

Each runner runs in a fresh child process (its own Prefect temporary server, its own workdir); the parent
samples the RSS of that child's whole process tree (psutil, every 0.25 s: the flow, the pool's workers or
Ray's raylet, GCS and workers) and keeps the peak. The shard plan is the same for both (ingest.workers=2,
dedup.workers=2, filters.workers=2, runner.workers=2), so both write the same files; the script checks that
every stage's output has the same bytes and fails otherwise.

    .venv/bin/python bench/curation/runners.py --records 1000000 --out bench/curation/results.json
    .venv/bin/python bench/curation/runners.py --records 20000 --out /tmp/runners.json   # a quick look

The records are chat records in the bundled sample's shape (a user prompt, an assistant reply, two or three
annotators' ratings), of Zipf-distributed words, ~570 bytes each; 5% are exact copies of an earlier record and
10% near copies (one word of the reply changed), so both dedup stages have work.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from bench.process_tree import tree_rss  # noqa: E402

STAGES = ("ingest", "exact_dedup", "near_dedup", "filter")


def make_records(n: int, out: Path, seed: int = 0) -> int:
    """Write ``n`` chat records as JSON lines; returns the bytes written. Deterministic for a seed."""
    import numpy as np

    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocab = np.array(sorted({"".join(rng.choice(letters, k)) for k in rng.integers(2, 9, 20_000)}))
    ranks = np.minimum(rng.zipf(1.2, size=n * 70), len(vocab)) - 1
    at = 0
    texts: list[tuple[str, str]] = []
    with open(out, "w") as f:
        for i in range(n):
            r = rng.random()
            if r < 0.05 and texts:  # an exact copy
                prompt, reply = texts[int(rng.integers(len(texts)))]
            elif r < 0.15 and texts:  # a near copy: a few words of the reply changed
                prompt, reply = texts[int(rng.integers(len(texts)))]
                words = reply.split()
                words[int(rng.integers(len(words)))] = vocab[int(rng.integers(len(vocab)))]
                reply = " ".join(words)
            else:
                lp, lr = int(rng.integers(8, 16)), int(rng.integers(35, 55))
                prompt = "Explain " + " ".join(vocab[ranks[at:at + lp]]) + "?"
                reply = " ".join(vocab[ranks[at + lp:at + lp + lr]]).capitalize() + "."
                at = (at + lp + lr) % (len(ranks) - 100)
                if len(texts) < 50_000:
                    texts.append((prompt, reply))
            anns = [{"annotator_id": f"ann{int(a):02d}", "rating": int(rng.integers(3, 6)), "labels": []}
                    for a in rng.choice(20, int(rng.integers(2, 4)), replace=False)]
            f.write(json.dumps({"id": f"r-{i:07d}", "messages": [{"role": "user", "content": prompt},
                                                                 {"role": "assistant", "content": reply}],
                                "annotations": anns}) + "\n")
        return f.tell()


def gzip_files(data: Path, n: int) -> Path:
    """The records of ``data`` cut into ``n`` gzipped JSON-lines files of one directory, in order."""
    import gzip

    lines = data.read_bytes().splitlines(keepends=True)
    out = data.with_name(f"{data.stem}-gz{n}")
    out.mkdir(exist_ok=True)
    per = -(-len(lines) // n)
    for i in range(n):
        (out / f"part-{i:03d}.jsonl.gz").write_bytes(gzip.compress(b"".join(lines[i * per:(i + 1) * per]), mtime=0))
    return out


def curate_child(kind: str, data: str, workdir: str) -> None:
    """In the child: the four stages as one flow on the runner ``kind``; prints one JSON line."""
    from prefect import flow

    from flows.runners import on_runner, worker_api_url
    from schemas.pipeline import load_config
    from tasks.dedup.stage import exact_dedup_task, near_dedup_task
    from tasks.filters import filter_task
    from tasks.ingest.stage import ingest_task

    cfg = load_config(ROOT / "configs/sample.yaml", [
        f"workdir={workdir}", f"ingest.sources.0.path={data}", "ingest.sources.0.format=messages",
        "ingest.workers=2", "dedup.workers=2", "filters.workers=2", f"runner.kind={kind}", "runner.workers=2"])

    @flow(name="curation-bench")
    def curation(cfg):  # noqa: ANN001, ANN202 - the bench's own flow: the curate flow's first four stages
        with worker_api_url(cfg.runner):
            ingested = ingest_task(cfg)
            exact = exact_dedup_task(ingested, cfg)
            near = near_dedup_task(exact, cfg)
            return [ingested, exact, near, filter_task(near, cfg)]

    started = time.perf_counter()
    stages = on_runner(curation, cfg.runner)(cfg)
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "stages": {s.name: str(s.path) for s in stages},
                      "ledgers": {s.name: s.ledger.to_dict() | {"extra": None} for s in stages}}))


def run_child(kind: str, data: Path, workdir: Path) -> dict:
    import psutil

    env = {**os.environ, "PREFECT_HOME": str(workdir / "prefect-home"), "PREFECT_API_URL": "",
           "PYTHONPATH": str(ROOT), "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "600"}
    env.pop("PREFECT_API_URL")
    workdir.mkdir(parents=True, exist_ok=True)
    log = open(workdir / "child.log", "w")  # noqa: SIM115 - open for the child's lifetime
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, __file__, "--child", kind, str(data), str(workdir)], env=env,
                             stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT)
    proc = psutil.Process(child.pid)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.25):
            peak = max(peak, tree_rss(proc))
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = child.communicate()
    done.set()
    sampler.join()
    wall = time.perf_counter() - started
    log.close()
    if child.returncode != 0:
        raise SystemExit(f"{kind}: the child failed with {child.returncode}; see {workdir / 'child.log'}")
    result = json.loads(out.strip().splitlines()[-1])
    return {"runner": kind, "flow_s": round(result["seconds"], 1), "wall_s": round(wall, 1),
            "peak_rss_gb": round(peak / 2**30, 2), "stages": result["stages"], "ledgers": result["ledgers"]}


def stage_digest(path: str) -> str:
    """One digest of a stage's files (all but stats.json, whose timings differ)."""
    h = hashlib.sha256()
    for p in sorted(Path(path).rglob("*")):
        if p.is_file() and p.name != "stats.json":
            h.update(p.relative_to(path).as_posix().encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        curate_child(*sys.argv[2:5])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--runners", default="processes,ray")
    ap.add_argument("--tmp", type=Path, default=None, help="where the data and workdirs go (default: a temp dir)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--gzip-files", type=int, default=0,
                    help="cut the records into N gzipped files of one directory (ingest then maps per file)")
    args = ap.parse_args()
    tmp = args.tmp or Path(tempfile.mkdtemp(prefix="bench-runners-"))
    tmp.mkdir(parents=True, exist_ok=True)
    data = tmp / f"records-{args.records}.jsonl"
    t0 = time.perf_counter()
    if data.is_file():  # deterministic: the same records as a previous run with this --tmp
        size = data.stat().st_size
    else:
        size = make_records(args.records, data)
    print(f"records: {args.records} ({size / 2**20:.0f} MiB) in {time.perf_counter() - t0:.0f} s", flush=True)
    if args.gzip_files:
        data = gzip_files(data, args.gzip_files)
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor()
    rows: list[dict] = []
    for kind in args.runners.split(","):
        row = run_child(kind, data, tmp / f"work-{kind}")
        row["digests"] = {name: stage_digest(p) for name, p in row.pop("stages").items()}
        print(json.dumps({k: v for k, v in row.items() if k != "ledgers"}), flush=True)
        rows.append(row)
        same = all(r["digests"] == rows[0]["digests"] for r in rows)
        result = {  # written after every runner, so a run cut short keeps what it measured
            "command": f"python bench/curation/runners.py --records {args.records} --runners {args.runners}"
                       + (f" --gzip-files {args.gzip_files}" if args.gzip_files else ""),
            "source": f"{args.gzip_files} gzipped files" if args.gzip_files else "one JSON-lines file",
            "machine": f"{os.cpu_count()} cores ({cpu}), shared with other jobs; Python {platform.python_version()}",
            "records": args.records, "input_mib": round(size / 2**20),
            "stages": list(STAGES), "same_outputs": same, "kept": rows[0]["ledgers"]["filter"]["kept"],
            "rows": [{k: v for k, v in r.items() if k not in ("ledgers",)} for r in rows],
            "ledgers": rows[0]["ledgers"],
        }
        if args.out:
            args.out.write_text(json.dumps(result, indent=2) + "\n")
    if not same:
        print("the runners wrote different files: " + json.dumps([r["digests"] for r in rows]), file=sys.stderr)
    print(json.dumps(result, indent=2))
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
