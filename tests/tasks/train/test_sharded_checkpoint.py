"""Sharded (DCP) checkpoint files read back through the restricted unpickler: a real DCP checkpoint loads, a
tampered metadata file that would run code is refused (the weights-only promise of tasks.train.checkpoint)."""
from __future__ import annotations

import os
import pickle

import pytest
import torch
import torch.distributed.checkpoint as dcp

from tasks.train.checkpoint import SafeLoadPlanner, SafeReader


def test_a_dcp_checkpoint_loads_through_the_safe_reader_with_tensors_and_plain_values(tmp_path):
    saved = {"model": {"w": torch.arange(6, dtype=torch.float32).view(2, 3), "b": torch.ones(2, dtype=torch.bfloat16)},
             "optimizer": {"state": {"w": {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 0.1, "params": ["w"]}]}}
    dcp.save(saved, checkpoint_id=tmp_path / "dcp")  # one process: DCP runs without a process group
    target = {"model": {"w": torch.zeros(2, 3), "b": torch.zeros(2, dtype=torch.bfloat16)},
              "optimizer": {"state": {"w": {"step": torch.tensor(0.0)}}, "param_groups": [{"lr": 0.0, "params": []}]}}
    dcp.load(target, storage_reader=SafeReader(tmp_path / "dcp"), planner=SafeLoadPlanner())
    torch.testing.assert_close(target["model"]["w"], saved["model"]["w"])
    assert target["model"]["b"].dtype == torch.bfloat16 and target["model"]["b"].tolist() == [1.0, 1.0]
    assert target["optimizer"]["param_groups"][0]["lr"] == 0.1 and float(target["optimizer"]["state"]["w"]["step"]) == 3


class _Evil:
    """Makes a directory when unpickled. os.mkdir, not print: Ray, once started in the test process, swaps
    builtins.print for its own, which would change the name the refusal reports."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_a_tampered_dcp_metadata_file_is_refused(tmp_path):
    dcp.save({"model": {"w": torch.ones(2)}}, checkpoint_id=tmp_path / "dcp")
    marker = tmp_path / "ran-from-a-checkpoint"
    (tmp_path / "dcp" / ".metadata").write_bytes(pickle.dumps(_Evil(marker)))
    with pytest.raises(pickle.UnpicklingError, match=r"mkdir, which is not allowed"):
        SafeReader(tmp_path / "dcp").read_metadata()
    assert not marker.exists()
