"""Resumable training checkpoints: trainable weights, optimizer, scheduler, RNG states and data position.

Each checkpoint is a directory ``step-NNNNNNNN`` written under a temporary name and renamed when complete, so
a run killed while saving resumes from the previous complete one. Only the trainable (adapter) weights are
saved, at full precision (the fp32 masters when there are any, so a resumed run continues the same
curve): the frozen base is reloaded from its source. ``state.pt`` holds tensors and plain Python values
only, and loads with ``torch.load(weights_only=True)``: a tampered file cannot run code when a run resumes.
"""
from __future__ import annotations

import json
import os
import pickle
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tasks.train.master import MasterWeights

STATE_FILE = "state.pt"
META_FILE = "meta.json"


def rng_state() -> dict[str, Any]:
    """Every RNG's state as tensors and plain values (numpy's key array as an int64 tensor), which the
    weights-only unpickler accepts."""
    np_state = np.random.get_state(legacy=False)
    numpy_state = {**np_state, "state": {**np_state["state"], "key": torch.from_numpy(np_state["state"]["key"]
                                                                                   .astype(np.int64))}}
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    key = numpy_state["state"]["key"].numpy().astype(np.uint32)
    np.random.set_state({**numpy_state, "state": {**numpy_state["state"], "key": key}})
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(ckpt_root: Path, step: int, weights: MasterWeights, optimizer, scheduler,
                    progress: dict[str, Any], keep: int = 2) -> Path:
    """Write checkpoint ``step`` atomically and prune all but the latest ``keep``."""
    ckpt_root = Path(ckpt_root)
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step-{step:08d}"
    tmp = ckpt_root / f".step-{step:08d}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    torch.save({"model": weights.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "rng": rng_state(), "progress": progress}, tmp / STATE_FILE)
    (tmp / META_FILE).write_text(json.dumps({"step": step, **{k: v for k, v in progress.items()
                                                               if isinstance(v, (int, float, str))}}, indent=1))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(ckpt_root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary leftovers of a killed save are not listed)."""
    if not Path(ckpt_root).is_dir():
        return []
    return sorted(p for p in Path(ckpt_root).glob("step-*") if (p / STATE_FILE).is_file() and (p / META_FILE).is_file())


def load_latest_checkpoint(ckpt_root: Path, weights: MasterWeights, optimizer,
                           scheduler) -> dict[str, Any] | None:
    """Restore the latest checkpoint into the weights (fp32 masters and the model's copies), the optimizer, the
    scheduler and the RNGs; returns its progress dict."""
    found = list_checkpoints(ckpt_root)
    if not found:
        return None
    path = found[-1] / STATE_FILE
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise RuntimeError(f"refusing to resume from {path}: it holds objects other than tensors and plain "
                           "values (a checkpoint of an older peftpipe, or not ours). Remove that checkpoint "
                           f"directory to train from the one before it, or from the start.\n{exc}") from exc
    try:
        weights.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise RuntimeError(f"checkpoint {found[-1]}: {exc}") from exc
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return state["progress"]
