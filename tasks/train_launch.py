"""Data-parallel training over several GPUs (or CPU processes): torchrun runs ``train_adapter`` once per rank.

Each rank trains on its own share of every step's rows and ``tasks.train`` sums the (small) LoRA gradients
across ranks before each optimizer step, so N processes take the same steps as one process with N times the
micro-batches. Rank 0 logs metrics and writes checkpoints and outputs; the launcher reads its metrics.json.
  python -m torch.distributed.run --standalone --nproc_per_node N -m tasks.train_launch SPEC_JSON
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
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
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    try:
        import mlflow
        env.setdefault("MLFLOW_TRACKING_URI", mlflow.get_tracking_uri())  # the ranks log where we log
    except ImportError:
        pass
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "tasks.train_launch", str(spec)]
    proc = subprocess.run(cmd, env=env, cwd=root)
    if proc.returncode != 0:
        raise RuntimeError(f"distributed training failed (exit {proc.returncode}): {' '.join(cmd)}")
    return json.loads((out / "metrics.json").read_text())


def main(spec_path: str) -> None:
    from tasks.train import mlflow_metrics_logger, train_adapter

    spec = json.loads(Path(spec_path).read_text())
    cfg = PipelineConfig.model_validate(spec["config"])
    use_cuda = cfg.train.device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    torch.distributed.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(minutes=30))
    try:
        rank0 = torch.distributed.get_rank() == 0
        log = mlflow_metrics_logger(spec["run_id"]) if rank0 else None
        train_adapter(Path(spec["tokenized_dir"]), spec["base"], cfg, Path(spec["out"]), log)
        torch.distributed.barrier()  # no rank leaves before rank 0 has written the outputs
    finally:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
