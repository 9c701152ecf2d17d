"""The torchrun command each node runs, built from the train config (one node, c10d and static rendezvous)."""
from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from tasks.train.launch import torchrun_command, world_size
from tests.tasks.train.test_train import make_cfg

SPEC = Path("/shared/out/launch-node0.json")


def args_of(cmd: list[str]) -> list[str]:
    assert cmd[1:3] == ["-m", "torch.distributed.run"] and cmd[-3:] == ["-m", "tasks.train.rank", str(SPEC)]
    return cmd[3:-3]


def test_one_node_is_standalone():
    cmd = torchrun_command(make_cfg(Path(".")), 4, SPEC, rdzv_id="job")
    assert args_of(cmd) == ["--standalone", "--nproc-per-node=4"]


def test_two_nodes_meet_at_the_c10d_endpoint_with_their_node_rank():
    cfg = make_cfg(Path("."), nnodes=2, node_rank=1, rdzv_endpoint="node0.cluster:29400", num_processes=8)
    assert args_of(torchrun_command(cfg, 8, SPEC, rdzv_id="peftpipe-abc")) == [
        "--nnodes=2", "--node-rank=1", "--rdzv-backend=c10d", "--rdzv-endpoint=node0.cluster:29400",
        "--rdzv-id=peftpipe-abc", "--nproc-per-node=8"]
    assert world_size(cfg, 8) == 16
    named = make_cfg(Path("."), nnodes=2, rdzv_endpoint="h:1", rdzv_id="run-7")
    assert "--rdzv-id=run-7" in torchrun_command(named, 1, SPEC, rdzv_id="ignored")


def test_static_rendezvous_uses_master_addr_and_port():
    cfg = make_cfg(Path("."), nnodes=2, node_rank=0, master_addr="10.0.0.5", master_port=29501)
    assert args_of(torchrun_command(cfg, 2, SPEC, rdzv_id="x")) == [
        "--nnodes=2", "--node-rank=0", "--master-addr=10.0.0.5", "--master-port=29501", "--nproc-per-node=2"]


def test_several_nodes_need_a_rendezvous_and_a_node_rank_below_nnodes():
    with pytest.raises(ValidationError, match="rdzv_endpoint"):
        make_cfg(Path("."), nnodes=2)
    with pytest.raises(ValidationError, match="node_rank"):
        make_cfg(Path("."), nnodes=2, node_rank=2, master_addr="h")
