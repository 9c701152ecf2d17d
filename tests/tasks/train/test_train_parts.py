"""The recipe's parts: the fused chunked loss equals the plain one, targets never cross sequences, the data
cursor resumes where it was."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tasks.train.data import DataCursor, TrainingRow, collate, micro_batches_for_step, shift_targets
from tasks.train.loss import fused_linear_cross_entropy, plain_linear_cross_entropy


@pytest.mark.parametrize("chunk", [3, 7, 64])
def test_fused_chunked_loss_and_gradients_equal_the_plain_ones(chunk):
    torch.manual_seed(0)
    hidden = torch.randn(20, 16, dtype=torch.float64, requires_grad=True)
    head = torch.nn.Linear(16, 50, bias=False).double()
    targets = torch.randint(0, 50, (20,))
    ref = plain_linear_cross_entropy(hidden, head, targets)
    ref.backward()
    ref_h, ref_w = hidden.grad.clone(), head.weight.grad.clone()
    hidden.grad, head.weight.grad = None, None
    got = fused_linear_cross_entropy(hidden, head.weight, targets, chunk)
    (got * 0.5).backward()  # a scaled upstream gradient must scale both gradients
    assert got.item() == pytest.approx(ref.item(), rel=1e-6)  # both take the logits in fp32
    assert torch.allclose(hidden.grad, 0.5 * ref_h, rtol=1e-5, atol=1e-6)
    assert torch.allclose(head.weight.grad, 0.5 * ref_w, rtol=1e-5, atol=1e-6)


def test_targets_shift_inside_each_sequence_only():
    labels = np.array([-100, 11, 12, -100, 21, 22])
    positions = np.array([0, 1, 2, 0, 1, 2])
    assert shift_targets(labels, positions).tolist() == [11, 12, -100, 21, 22, -100]


def test_collate_layouts_keep_every_real_token_and_pad_without_loss():
    rows = [TrainingRow(np.arange(5), np.array([1, 2, 3, 4, -100]), np.arange(5)),
            TrainingRow(np.arange(3), np.array([7, 8, -100]), np.arange(3))]
    flat = collate(rows, "flat", pad_id=0, multiple=4)
    assert flat.input_ids.shape == (1, 8) and flat.n_tokens == 8 and flat.n_loss_tokens == 6
    assert flat.position_ids[0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2]
    padded = collate(rows, "padded", pad_id=9, multiple=4)
    assert padded.input_ids.shape == (2, 8) and padded.n_tokens == 8
    assert padded.input_ids[1, 3:].tolist() == [9] * 5 and (padded.targets[1, 3:] == -100).all()
    assert padded.position_ids[1].tolist() == [0, 1, 2, 0, 1, 2, 3, 4]  # the pad run is its own sequence


def test_cursor_resumes_the_same_order_across_epochs():
    a = DataCursor(seed=3)
    first = a.take(5, 7)
    state = a.state_dict()
    rest = a.take(5, 6)
    b = DataCursor(seed=0)
    b.load_state_dict(state)
    assert b.take(5, 6) == rest
    assert sorted(first[:5]) == list(range(5)) and a.epoch == 2


def test_token_budget_and_ranks_split_each_step():
    rows = [TrainingRow(np.arange(10), np.arange(10), np.arange(10)) for _ in range(8)]
    one = micro_batches_for_step(rows, DataCursor(0), 2, 1, 50, "flat", 0)
    assert [b.n_tokens for b in one] == [20, 20, 20]  # 60 >= 50 tokens
    two = [micro_batches_for_step(rows, DataCursor(0), 1, 1, 50, "flat", 0, rank=r, world_size=2) for r in (0, 1)]
    assert [len(m) for m in two] == [3, 3]  # both ranks take the same number of micro-batches
