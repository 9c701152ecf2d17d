"""Data-parallel training on 2 GPUs against 1 GPU, same global batch: the same loss curve, about twice the speed.
  python bench/train/ddp.py OUT_JSON            (on a machine with 2 GPUs; env STEPS=10, MB=4)
Both runs use the 1B shape's random checkpoint (built as bench/train/speed.py builds it), QLoRA, regional
compile, bf16 LoRA weights, SEQ-token random rows. 1 GPU takes 2*MB rows per step; 2 GPUs take MB each.
"""
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
try:
    import prefect  # noqa: F401
except ImportError:  # the GPU machine has no Prefect: ranks get a no-op @task (not what is measured here)
    shim = Path(tempfile.mkdtemp()) / "prefect"
    shim.mkdir()
    (shim / "__init__.py").write_text("def task(*a, **k):\n    return a[0] if a and callable(a[0]) else "
                                      "(lambda f: f)\n")
    sys.path.insert(0, str(shim.parent))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(shim.parent), os.environ.get("PYTHONPATH", "")])
from bench.train.speed import SEQ, checkpoint  # noqa: E402
from schemas.pipeline import PipelineConfig  # noqa: E402
from tasks.train.launch import launch_distributed  # noqa: E402
from tasks.train.recipe import train_adapter  # noqa: E402
from tasks.train.synthetic import random_rows, write_split  # noqa: E402

STEPS, MB = int(os.environ.get("STEPS", 10)), int(os.environ.get("MB", 4))


def config(work: Path, base: str, mb: int, nproc: int) -> PipelineConfig:
    return PipelineConfig.model_validate({
        "ingest": {"sources": [{"name": "bench", "path": "unused"}]}, "workdir": str(work),
        "model": {"name_or_path": base, "attn_implementation": "sdpa"},
        "adapter": {"method": "qlora", "r": 16, "alpha": 32, "adapter_dtype": "auto"},
        "train": {"max_steps": STEPS, "micro_batch_size": mb, "lr": 1e-4, "warmup_steps": 1, "eval_every": STEPS,
                  "eval_max_batches": 2, "save_every": 10**6, "compile": True, "loss": "chunked",
                  "num_processes": nproc}})


if __name__ == "__main__":
    out_json = sys.argv[1]
    base = checkpoint("llama-1b")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_split(work / "tok" / "train", random_rows(2 * MB * STEPS, 32000, seed=0, seq_len=SEQ))
        write_split(work / "tok" / "eval", random_rows(2 * MB, 32000, seed=1, seq_len=SEQ))
        for nproc in (1, 2):
            t0 = time.time()
            cfg = config(work, base, 2 * MB // nproc, nproc)
            if nproc == 1:
                res = train_adapter(work / "tok", base, cfg, work / "one")
            else:
                res = launch_distributed(work / "tok", base, cfg, work / "two", None, nproc)
            row = {"gpus": nproc, "micro_batch_per_gpu": 2 * MB // nproc, "steps": res["steps"],
                   "train_loss": res["train_loss"], "eval_loss": res["eval_loss"],
                   "tokens_per_s": round(res["tokens_per_s"]), "peak_gib_rank0": round(res.get("gpu_peak_gib", 0), 2),
                   "wall_s": round(time.time() - t0, 1), "gpu": torch.cuda.get_device_name()}
            rows.append(row)
            print(json.dumps(row), flush=True)
            Path(out_json).write_text(json.dumps(rows, indent=1))
            torch._dynamo.reset()
