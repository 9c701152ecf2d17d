"""One data-parallel (or FSDP) rank: ``tasks.train.launch`` starts N of these through torchrun.

  python -m torch.distributed.run --standalone --nproc_per_node N -m tasks.train.rank SPEC_JSON
"""
from __future__ import annotations

import json
import os
import sys
from datetime import timedelta
from pathlib import Path

import torch

from schemas.pipeline import PipelineConfig
from tasks.train.recipe import train_adapter
from tasks.train.step_log import step_logger


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    cfg = PipelineConfig.model_validate(spec["config"])
    use_cuda = cfg.train.device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        cap = os.environ.get("PEFTPIPE_GPU_MEMORY_CAP_GIB")  # bench/train/fsdp.py: stand in for smaller cards
        if cap:
            total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, float(cap) * 2**30 / total))
    torch.distributed.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(minutes=30))
    try:
        rank0 = torch.distributed.get_rank() == 0
        train = train_adapter
        if cfg.train.objective != "sft":  # DPO / KTO: the preference recipe (tasks.train.preference)
            from tasks.train.preference import train_preference_adapter as train
        with step_logger(spec["run_id"] if rank0 else None, cfg.train.max_steps) as log:
            train(Path(spec["tokenized_dir"]), spec["base"], cfg, Path(spec["out"]), log)
        torch.distributed.barrier()  # no rank leaves before rank 0 has written the outputs
    finally:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
