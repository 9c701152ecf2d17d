"""Training checkpoints load with torch.load(weights_only=True): a resume restores weights, optimizer,
scheduler and every RNG exactly, and a state file that would run code when unpickled is refused, not run."""
import os
import random

import numpy as np
import pytest
import torch

from tasks.train.checkpoint import STATE_FILE, list_checkpoints, load_latest_checkpoint, save_checkpoint
from tasks.train.master import MasterWeights


def make():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    weights = MasterWeights(list(model.named_parameters()))
    optimizer = torch.optim.AdamW(weights.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    return model, weights, optimizer, scheduler


def test_resume_restores_weights_optimizer_scheduler_and_rngs(tmp_path):
    model, weights, optimizer, scheduler = make()
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    scheduler.step()
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    save_checkpoint(tmp_path, 1, weights, optimizer, scheduler,
                    {"step": 1, "best_eval_loss": float("inf"), "cursor": {"seed": 0, "epoch": 0, "index": 5}})
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    torch.load(list_checkpoints(tmp_path)[-1] / STATE_FILE, weights_only=True)  # tensors and plain values only

    fresh, fresh_weights, fresh_opt, fresh_sched = make()
    progress = load_latest_checkpoint(tmp_path, fresh_weights, fresh_opt, fresh_sched)
    assert progress["cursor"] == {"seed": 0, "epoch": 0, "index": 5} and progress["best_eval_loss"] == float("inf")
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected
    torch.testing.assert_close(fresh.weight, model.weight, rtol=0, atol=0)
    restored, saved = fresh_opt.state_dict()["state"][0], optimizer.state_dict()["state"][0]
    torch.testing.assert_close(restored["exp_avg"], saved["exp_avg"])
    assert fresh_sched.last_epoch == scheduler.last_epoch == 1


class RunsCode:
    """Unpickling this creates a directory: what a tampered checkpoint could do with any command."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_a_state_file_that_would_run_code_is_refused_and_not_run(tmp_path):
    model, weights, optimizer, scheduler = make()
    save_checkpoint(tmp_path / "ckpt", 2, weights, optimizer, scheduler, {"step": 2})
    [ckpt] = list_checkpoints(tmp_path / "ckpt")
    marker = tmp_path / "code-ran"
    torch.save({"model": {}, "progress": RunsCode(marker)}, ckpt / STATE_FILE)
    with pytest.raises(RuntimeError, match="refusing to resume from .*state.pt"):
        load_latest_checkpoint(tmp_path / "ckpt", weights, optimizer, scheduler)
    assert not marker.exists()
