"""Data-parallel training over several GPUs (or CPU processes): torchrun runs ``train_adapter`` once per rank.

Each rank trains on its own share of every step's rows and ``tasks.train.recipe`` sums the (small) LoRA gradients
across ranks before each optimizer step, so N processes take the same steps as one process with N times the
micro-batches. Rank 0 logs metrics and writes checkpoints and outputs; the launcher reads its metrics.json.
Each rank runs ``tasks.train.rank`` (kept apart so the recipe can import this launcher without a circle).

Across machines (``train.nnodes`` > 1) every node runs this launcher with its own ``train.node_rank``; torchrun
meets the other nodes at ``train.rdzv_endpoint`` (c10d rendezvous) or ``train.master_addr:master_port``
(static). The training code is the same: it only sees a larger world. The output directory (the workdir) must
be on storage every node reads, since rank 0 writes the outputs and each node's launcher reads them back.
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


def visible_gpus() -> int:
    """The GPUs this process may use on this node: the entries of ``CUDA_VISIBLE_DEVICES`` up to the first
    invalid one (as CUDA reads it; empty: none), else every GPU torch sees. What the ``gpu`` concurrency limit,
    the GPU worker's limit and the number of ranks follow, instead of a constant."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        n = 0
        for entry in env.split(","):
            entry = entry.strip()
            if not entry or entry.startswith("-"):  # CUDA ignores this entry and everything after it
                break
            n += 1
        return n
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def num_processes(cfg: PipelineConfig) -> int:
    """How many ranks to run on this node: ``train.num_processes``, else every visible GPU (one process on CPU)."""
    if cfg.train.num_processes is not None:
        return cfg.train.num_processes
    if cfg.train.device == "cpu" or not torch.cuda.is_available():
        return 1
    return max(1, visible_gpus())


def world_size(cfg: PipelineConfig, nproc: int) -> int:
    """All ranks of a training: ``nproc`` per node on each of ``train.nnodes`` nodes."""
    return nproc * cfg.train.nnodes


def torchrun_command(cfg: PipelineConfig, nproc: int, spec: Path, rdzv_id: str) -> list[str]:
    """The torchrun command line of this node: ``--standalone`` on one node; on several, the rendezvous of the
    train config (c10d at ``rdzv_endpoint``, or static at ``master_addr:master_port``) and this node's rank."""
    tc = cfg.train
    cmd = [sys.executable, "-m", "torch.distributed.run"]
    if tc.nnodes == 1 and tc.rdzv_endpoint is None and tc.master_addr is None:
        cmd += ["--standalone"]
    elif tc.rdzv_endpoint is not None:
        cmd += [f"--nnodes={tc.nnodes}", f"--node-rank={tc.node_rank}", "--rdzv-backend=c10d",
                f"--rdzv-endpoint={tc.rdzv_endpoint}", f"--rdzv-id={tc.rdzv_id or rdzv_id}"]
    else:
        cmd += [f"--nnodes={tc.nnodes}", f"--node-rank={tc.node_rank}", f"--master-addr={tc.master_addr}",
                f"--master-port={tc.master_port}"]
    return [*cmd, f"--nproc-per-node={nproc}", "-m", "tasks.train.rank", str(spec)]


def launch_distributed(tokenized_dir: Path, base: str, cfg: PipelineConfig, out: Path, run_id: str | None,
                       nproc: int) -> dict:
    """Run ``train_adapter`` under torchrun with ``nproc`` ranks on this machine (and, with ``train.nnodes`` > 1,
    as one node of a multi-node job); return rank 0's metrics."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    spec = out / SPEC_FILE.replace(".json", f"-node{cfg.train.node_rank}.json")  # nodes may share ``out``
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
    # The default job id names the output directory, which is the same on every node of one training.
    cmd = torchrun_command(cfg, nproc, spec, rdzv_id="peftpipe-" + out.name[:32])
    proc = subprocess.run(cmd, env=env, cwd=root)
    if proc.returncode != 0:
        raise RuntimeError(f"distributed training failed (exit {proc.returncode}): {' '.join(cmd)}")
    return json.loads((out / "metrics.json").read_text())
