"""Data-parallel training over several GPUs (or CPU processes): torchrun runs ``train_adapter`` once per rank.

Each rank trains on its own share of every step's rows and ``tasks.train.recipe`` sums the (small) LoRA gradients
across ranks before each optimizer step, so N processes take the same steps as one process with N times the
micro-batches. Rank 0 logs metrics and writes checkpoints and outputs; the launcher reads its metrics.json.
Each rank runs ``tasks.train.rank`` (kept apart so the recipe can import this launcher without a circle).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from schemas.pipeline import PipelineConfig

SPEC_FILE = "launch.json"


def num_processes(cfg: PipelineConfig) -> int:
    """How many ranks to run: ``train.num_processes``, else every visible GPU (one process on CPU)."""
    if cfg.train.num_processes is not None:
        return cfg.train.num_processes
    if cfg.train.device == "cpu" or not torch.cuda.is_available():
        return 1
    return torch.cuda.device_count()


def launch_distributed(tokenized_dir: Path, base: str, cfg: PipelineConfig, out: Path, run_id: str | None,
                       nproc: int) -> dict:
    """Run ``train_adapter`` under torchrun with ``nproc`` ranks on this machine; return rank 0's metrics."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    spec = out / SPEC_FILE
    spec.write_text(json.dumps({"tokenized_dir": str(tokenized_dir), "base": base, "out": str(out),
                                "run_id": run_id, "config": cfg.model_dump(mode="json")}))
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    try:
        import mlflow
        env.setdefault("MLFLOW_TRACKING_URI", mlflow.get_tracking_uri())  # the ranks log where we log
    except ImportError:
        pass
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "tasks.train.rank", str(spec)]
    proc = subprocess.run(cmd, env=env, cwd=root)
    if proc.returncode != 0:
        raise RuntimeError(f"distributed training failed (exit {proc.returncode}): {' '.join(cmd)}")
    return json.loads((out / "metrics.json").read_text())
