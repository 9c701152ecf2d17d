"""The `gpu` limit, the GPU worker's limit and the ranks of a training follow the node's visible GPUs."""
from __future__ import annotations

from pathlib import Path

import pytest

from flows.deployments import gpu_slots
from scripts.servers import GPU_POOL, main, node_gpus, worker_command
from tasks.train.launch import visible_gpus
from tests.tasks.train.test_train import make_cfg


@pytest.mark.parametrize(("env", "n"), [("0,1,2,3", 4), ("2", 1), ("", 0), ("0,1,-1,3", 2), ("GPU-5f3a,GPU-77b1", 2)])
def test_visible_gpus_reads_cuda_visible_devices_as_cuda_does(monkeypatch, env, n):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", env)
    assert visible_gpus() == n


def test_without_the_variable_it_counts_what_torch_sees(monkeypatch):
    import torch

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert visible_gpus() == (torch.cuda.device_count() if torch.cuda.is_available() else 0)


def test_the_gpu_slots_and_the_worker_limit_come_from_the_node(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    assert node_gpus() == 3 and node_gpus(8) == 8  # --gpus still wins when given
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert node_gpus() == 1  # a CPU-only node still runs one training at a time
    assert worker_command(GPU_POOL, 3)[-2:] == ["--limit", "3"]
    assert "--limit" not in worker_command("peftpipe-cpu")


def test_setup_without_gpus_asks_the_node(monkeypatch, capsys):
    seen = {}
    monkeypatch.setattr("scripts.servers.setup_orchestration", lambda url, gpus: seen.update(gpus=gpus))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert main(["setup", "--api-url", "http://127.0.0.1:1/api"]) == 0
    assert seen == {"gpus": 2} and "visible GPUs" in capsys.readouterr().out


def test_a_training_takes_one_slot_per_rank_on_this_node():
    assert gpu_slots(make_cfg(Path("."), num_processes=4)) == 4
    assert gpu_slots(make_cfg(Path("."), device="cpu")) == 1
