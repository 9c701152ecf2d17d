"""Resumable training checkpoints: trainable weights, optimizer, scheduler, RNG states and data position.

Each checkpoint is a directory ``step-NNNNNNNN`` written under a temporary name and renamed when complete, so
a run killed while saving resumes from the previous complete one. Only the trainable (adapter) weights are
saved, at full precision (the fp32 masters when there are any, so a resumed run continues the same
curve): the frozen base is reloaded from its source. ``state.pt`` holds tensors and plain Python values
only, and loads with ``torch.load(weights_only=True)``: a tampered file cannot run code when a run resumes.

Under FSDP (``train.parallel: fsdp``) the trainable weights and the optimizer state are sharded: every rank
writes its shards with torch.distributed.checkpoint (DCP) into ``dcp/`` (``get_state_dict`` /
``set_state_dict``, frozen base excluded), its RNG states into ``rng-<rank>.pt``, and rank 0 the scheduler and
progress into ``state.pt``. DCP pickles its metadata and non-tensor values; they are read back here through the
weights-only unpickler too (``SafeReader``, ``SafeLoadPlanner``), so the same promise holds. DCP reshards on
load, so a sharded checkpoint resumes on another number of ranks.
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

from tasks.core.handoff import RestrictedUnpickler
from tasks.train.dist import dist_rank
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
                    progress: dict[str, Any], keep: int = 2, sharded=None) -> Path:
    """Write checkpoint ``step`` atomically and prune all but the latest ``keep``. With ``sharded`` (the FSDP
    root) every rank calls this and writes its own shards."""
    if sharded is not None:
        return _save_sharded(Path(ckpt_root), step, sharded, optimizer, scheduler, progress, keep)
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
                           scheduler, sharded=None) -> dict[str, Any] | None:
    """Restore the latest checkpoint into the weights (fp32 masters and the model's copies), the optimizer, the
    scheduler and the RNGs; returns its progress dict. With ``sharded`` (the FSDP root) every rank calls this
    and reads its shards."""
    found = list_checkpoints(ckpt_root)
    if not found:
        return None
    if (found[-1] / DCP_DIR).is_dir() != (sharded is not None):
        kind = "sharded (train.parallel: fsdp)" if (found[-1] / DCP_DIR).is_dir() else "unsharded (ddp or one process)"
        raise RuntimeError(f"checkpoint {found[-1]} is {kind}: resume it with the parallel setting that wrote it, "
                           "or remove the checkpoints directory to train from the start")
    if sharded is not None:
        return _load_sharded(found[-1], sharded, optimizer, scheduler)
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


# --- sharded checkpoints (FSDP)

DCP_DIR = "dcp"


def _dcp_options(strict: bool = True):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # The frozen base is not saved (it is reloaded from its source), so a load is not strict: _load_sharded
    # checks that every trainable weight came back instead.
    return StateDictOptions(ignore_frozen_params=True, strict=strict)


def _barrier() -> None:
    torch.distributed.barrier()


def _save_sharded(ckpt_root: Path, step: int, root, optimizer, scheduler, progress: dict[str, Any],
                  keep: int) -> Path:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    rank = dist_rank()
    final = ckpt_root / f"step-{step:08d}"
    tmp = ckpt_root / f".step-{step:08d}.tmp-sharded"  # one name for every rank (and node)
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    model_sd, optim_sd = get_state_dict(root, optimizer, options=_dcp_options())
    dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=tmp / DCP_DIR)
    torch.save(rng_state(), tmp / f"rng-{rank}.pt")
    _barrier()
    if rank == 0:
        torch.save({"scheduler": scheduler.state_dict(), "rng": rng_state(), "progress": progress}, tmp / STATE_FILE)
        (tmp / META_FILE).write_text(json.dumps({"step": step, "sharded": True, **{
            k: v for k, v in progress.items() if isinstance(v, (int, float, str))}}, indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(ckpt_root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def _load_sharded(ckpt: Path, root, optimizer, scheduler) -> dict[str, Any]:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    try:
        state = torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=True)
        model_sd, optim_sd = get_state_dict(root, optimizer, options=_dcp_options())
        loaded = {"model": model_sd, "optimizer": optim_sd}
        dcp.load(loaded, storage_reader=SafeReader(ckpt / DCP_DIR), planner=SafeLoadPlanner())
    except pickle.UnpicklingError as exc:
        raise RuntimeError(f"refusing to resume from {ckpt}: it holds objects other than tensors and plain "
                           f"values. Remove that checkpoint directory to train from the one before it.\n{exc}") from exc
    keys = set_state_dict(root, optimizer, model_state_dict=loaded["model"], optim_state_dict=loaded["optimizer"],
                          options=_dcp_options(strict=False))
    trainable = {n for n, p in root.named_parameters() if p.requires_grad}
    if keys is not None and (lost := trainable & set(keys.missing_keys)):
        raise RuntimeError(f"checkpoint {ckpt} lacks trainable weights: {sorted(lost)[:5]}")
    scheduler.load_state_dict(state["scheduler"])
    own = ckpt / f"rng-{dist_rank()}.pt"  # a resume on more ranks than wrote it: the new ones take rank 0's
    set_rng_state(torch.load(own, weights_only=True) if own.is_file() else state["rng"])
    return state["progress"]


def _allowed_in_metadata(module: str, name: str) -> bool:
    """What a DCP metadata file may rebuild: DCP's metadata dataclasses, torch's dtype/size/layout values, the
    file slices and paths DCP records, and OrderedDict. Anything else (a callable smuggled into a tampered
    file) is refused."""
    from torch.distributed.checkpoint import metadata

    if module == metadata.__name__:
        return name in _METADATA_CLASSES
    if module == "torch":
        value = getattr(torch, name, None)
        return value is torch.Size or isinstance(value, (torch.dtype, torch.layout, torch.memory_format))
    return (module, name) in _METADATA_GLOBALS


_METADATA_GLOBALS = {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),  # a file slice
    ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "Path"),  # the checkpoint's own path
    ("torch.serialization", "_get_layout"),  # a layout looked up by its name
    ("collections", "OrderedDict"),
}
_METADATA_CLASSES = {"Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
                     "TensorProperties", "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING"}


def _make_safe_reader():
    from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class Reader(FileSystemReader):
        """DCP's reader, with the metadata file read by a restricted unpickler (DCP uses plain pickle)."""

        def read_metadata(self, *args: Any, **kwargs: Any):
            path = self._get_metadata_path(kwargs.get("rank"))
            with self.fs.create_stream(path, "rb") as f:
                metadata = RestrictedUnpickler(f, _allowed_in_metadata, "checkpoint metadata").load()
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    class Planner(DefaultLoadPlanner):
        """DCP's planner, with non-tensor values (the optimizer's param groups) read weights-only."""

        def load_bytes(self, read_item, value) -> None:
            obj = torch.load(value, weights_only=True)
            if self.flatten_state_dict:
                from torch.distributed.checkpoint._traverse import set_element as set_in
                set_in(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
            else:
                self.state_dict[read_item.dest_index.fqn] = obj

    return Reader, Planner


def SafeReader(path: Path):  # noqa: N802 (a class built lazily: DCP loads only when a run is sharded)
    return _make_safe_reader()[0](str(path))


def SafeLoadPlanner():  # noqa: N802
    return _make_safe_reader()[1]()
