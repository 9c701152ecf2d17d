"""Orchestration overhead and cached reruns of the whole pipeline on the bundled sample.

    .venv/bin/python bench/orchestration/bench.py [--max-steps 30] [--skip-deployment]

Measured, each in a fresh process so imports and Prefect's start-up are counted as a user pays them:

1. ``peftpipe run`` in-process (Prefect's temporary server, MLflow on SQLite), on an empty workdir: the wall
   time of the process and of the flow call, against the sum of the task runs' own run times (the stage
   work, as Prefect recorded it). Overhead = flow wall time - sum of stage work.
2. The same command again on the same workdir: every stage is found complete and reused.
3. Again with one filter threshold changed (min_rating 3.0 -> 3.5): which stages were recomputed.
4. The pipeline deployment through a Prefect server and a process worker (``prefect deployment run
   --watch``), cold and cached, with the same split between stage work and the rest.

Writes bench/orchestration/results.json; `python bench/render.py` then renders its table in BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
OUT_JSON = ROOT / "bench" / "orchestration" / "results.json"
QUIET = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
         "PREFECT_SERVER_LOGGING_LEVEL": "ERROR", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
         "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
         # a busy machine can take longer than the default 20 s to start the temporary server
         "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300"}


def stage_dirs(workdir: Path) -> set[str]:
    return {f"{p.parent.name}/{p.name}" for p in (workdir / "stages").glob("*/*") if (p / "_SUCCESS").exists()}


def task_seconds(task_runs: list[dict[str, Any]], flow_runs: list[dict[str, Any]]) -> dict[str, float]:
    """Total run time per stage task name (``ingest-3f2`` -> ``ingest``), as recorded by Prefect.

    A subflow is also represented by a task run in its parent (the one its ``parent_task_run_id`` names),
    spanning the whole subflow: those are not stage work and are left out.
    """
    wrappers = {fr["parent_task_run_id"] for fr in flow_runs if fr.get("parent_task_run_id")}
    out: dict[str, float] = {}
    for tr in task_runs:
        if tr["id"] in wrappers:
            continue
        name = tr["name"].rsplit("-", 1)[0]
        out[name] = round(out.get(name, 0.0) + float(tr.get("total_run_time") or 0.0), 3)
    return out


def child_in_process(args: argparse.Namespace) -> int:
    """Run pipeline_flow in this process; print a JSON line with the flow's wall time and task run times."""
    t0 = time.perf_counter()
    import asyncio

    from prefect.client.orchestration import get_client

    from flows.pipeline import pipeline_flow
    from schemas.pipeline import load_config, validate_config
    imported = time.perf_counter() - t0
    cfg = load_config(ROOT / "configs/sample.yaml", args.set)
    if args.min_rating is not None:  # a filter threshold; the list of filters cannot be addressed by --set
        data = cfg.model_dump(mode="json")
        for spec in data["filters"]["filters"]:
            if spec["name"] == "min_rating":
                spec["params"]["threshold"] = args.min_rating
        cfg = validate_config(data)
    t1 = time.perf_counter()
    pipeline_flow(cfg)
    flow_wall = time.perf_counter() - t1

    async def read() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        async with get_client() as client:
            tasks = await client.read_task_runs(limit=200)
            flows = await client.read_flow_runs(limit=50)
            return [r.model_dump(mode="json") for r in tasks], [r.model_dump(mode="json") for r in flows]
    print("RESULT " + json.dumps({"import_s": round(imported, 2), "flow_wall_s": round(flow_wall, 2),
                                  "tasks_s": task_seconds(*asyncio.run(read()))}), flush=True)
    return 0


def run_in_process(workdir: Path, mlflow_db: Path, max_steps: int, min_rating: float | None = None) -> dict:
    home = Path(tempfile.mkdtemp(prefix="prefect-home-"))  # a fresh temporary server, as on a first run
    cmd = [sys.executable, __file__, "_child", "--set", f"workdir={workdir}",
           "--set", f"tracking.tracking_uri=sqlite:///{mlflow_db}", "--set", f"train.max_steps={max_steps}"]
    if min_rating is not None:
        cmd += ["--min-rating", str(min_rating)]
    before = stage_dirs(workdir)
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **QUIET, "PREFECT_HOME": str(home)},
                         capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"pipeline failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    line = next(x for x in res.stdout.splitlines() if x.startswith("RESULT "))
    out = json.loads(line[len("RESULT "):])
    out["process_wall_s"] = round(wall, 2)
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # CPU time is what a shared machine distorts least
    out["process_cpu_s"] = round(cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime, 2)
    out["stage_work_s"] = round(sum(out["tasks_s"].values()), 2)
    out["overhead_s"] = round(out["flow_wall_s"] - out["stage_work_s"], 2)
    out["recomputed"] = sorted(s.split("/")[0] for s in stage_dirs(workdir) - before)
    return out


def run_deployment(base: Path, max_steps: int) -> dict:
    from scripts.stack import Stack
    result: dict[str, Any] = {}
    with Stack(base / "stack") as stack:
        stack.start()
        stack.deploy()
        result["startup_s"] = dict(stack.timings)
        overrides = [f"workdir={base / 'work-deploy'}", f"tracking.tracking_uri={stack.mlflow.url}",
                     f"train.max_steps={max_steps}"]
        for label in ("cold", "cached"):
            before = stage_dirs(base / "work-deploy")
            t0 = time.perf_counter()
            run_id = stack.run_deployment("peftpipe-pipeline/pipeline", overrides, timeout=1800)
            wall = time.perf_counter() - t0
            run = stack.api("GET", f"/flow_runs/{run_id}")
            assert run["state_type"] == "COMPLETED", run["state"]
            subflows = stack.flow_runs(parent_flow_run_id={"any_": [run_id]})
            ids = [run_id] + [r["id"] for r in subflows]
            tasks = stack.api("POST", "/task_runs/filter", {"flow_runs": {"id": {"any_": ids}}, "limit": 200})
            per_task = task_seconds([t for t in tasks if t["flow_run_id"] in ids], subflows)
            stage_work = round(sum(per_task.values()), 2)
            result[label] = {"run_command_wall_s": round(wall, 2), "flow_run_s": round(run["total_run_time"], 2),
                             "queue_to_start_s": _start_delay(run), "stage_work_s": stage_work,
                             "overhead_s": round(run["total_run_time"] - stage_work, 2), "tasks_s": per_task,
                             "recomputed": sorted(s.split("/")[0] for s in stage_dirs(base / "work-deploy") - before)}
    return result


def _start_delay(run: dict) -> float:
    from datetime import datetime
    start, expected = run.get("start_time"), run.get("expected_start_time")
    if not start or not expected:
        return float("nan")
    return round((datetime.fromisoformat(start) - datetime.fromisoformat(expected)).total_seconds(), 2)


def machine() -> str:
    cpus = os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{platform.machine()}, {cpus} cores, load average at start {load:.1f}, Python {platform.python_version()}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", nargs="?", default="bench", choices=("bench", "_child"))
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--min-rating", type=float, default=None)
    parser.add_argument("--max-steps", type=int, default=30)
    parser.add_argument("--skip-deployment", action="store_true")
    args = parser.parse_args()
    if args.mode == "_child":
        return child_in_process(args)
    base = Path(tempfile.mkdtemp(prefix="orchestration-bench-"))
    results: dict[str, Any] = {"command": " ".join(["bench/orchestration/bench.py", *sys.argv[1:]]),
                               "machine": machine(), "max_steps": args.max_steps, "in_process": {}}
    work, db = base / "work", base / "mlruns.db"
    for label, min_rating in (("cold", None), ("cached", None), ("filter_changed", 3.5)):
        results["in_process"][label] = run_in_process(work, db, args.max_steps, min_rating)
        print(label, json.dumps(results["in_process"][label]), flush=True)
    if not args.skip_deployment:
        results["deployment"] = run_deployment(base, args.max_steps)
        print("deployment", json.dumps(results["deployment"]), flush=True)
    OUT_JSON.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {OUT_JSON}; run `python bench/render.py` to render it into BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
