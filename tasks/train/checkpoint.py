"""Resumable training checkpoints: trainable weights, optimizer, scheduler, RNG states and data position.

Each checkpoint is a directory ``step-NNNNNNNN`` written under a temporary name and renamed when complete, so
a run killed while saving resumes from the previous complete one. Only the trainable (adapter) weights are
saved, at full precision (the fp32 masters when there are any, so a resumed run continues the same
curve): the frozen base is reloaded from its source.
"""
from __future__ import annotations

import json
import os
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
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
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
    # Our own file: it holds RNG states (numpy arrays, tuples), which the weights-only unpickler refuses.
    state = torch.load(found[-1] / STATE_FILE, map_location="cpu", weights_only=False)
    try:
        weights.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise RuntimeError(f"checkpoint {found[-1]}: {exc}") from exc
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return state["progress"]
