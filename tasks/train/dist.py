"""Data parallelism as training sees it: this process's rank, the world size, and summed scalars.

Outside ``torch.distributed`` (one process) the rank is 0 and the world 1, so the recipe reads the same either way.
"""
from __future__ import annotations

import torch


def dist_world() -> int:
    """How many ranks train together (1 outside torch.distributed)."""
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


def dist_rank() -> int:
    """This process's rank (0 outside torch.distributed)."""
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def all_reduce_floats(values: list[float], device: torch.device, op: str = "sum") -> list[float]:
    """``values`` reduced over all ranks in float64, element by element: their sum, or with op="max" the
    largest."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX if op == "max" else torch.distributed.ReduceOp.SUM)
    return t.tolist()
