"""The causal-LM loss on the decoder's hidden states, computed only where a token carries a loss.

The full logits are the memory spike of LLM training: 8192 tokens x 128k vocabulary in fp32 is 4 GiB per copy
(ANCHORS.md). ``fused_linear_cross_entropy`` never builds them: chunk by chunk it computes the logits, the
loss and, at once, the gradient with respect to the hidden states (the softmax minus the one-hot, times the
head's weight), keeping only that gradient (tokens x hidden) for the backward pass. It is the same idea as
liger-kernel's fused linear cross-entropy, in plain PyTorch, so it needs no extra package.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from schemas.tokenize import IGNORE_INDEX
from schemas.train import TrainConfig
from tasks.train.data import TrainingRow, eval_batches
from tasks.train.dist import all_reduce_floats, dist_rank, dist_world
from tasks.train.fsdp import forwards_to_run, run_on


class _FusedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int):
        # hidden (N, H), weight (V, H), targets (N,) with no ignored entries. Returns the summed loss.
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk):
            h = hidden[start:start + chunk]
            t = targets[start:start + chunk]
            logits = (h @ weight.t()).float()
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
            probs = logits.sub_(lse[:, None]).exp_()  # in place: the logits are not needed any more
            probs[torch.arange(len(t), device=t.device), t] -= 1.0  # d(loss)/d(logits) = softmax - onehot
            g = probs.to(hidden.dtype)
            grad_hidden[start:start + chunk] = g @ weight
            if grad_weight is not None:
                grad_weight += (g.t() @ h).float()
        ctx.save_for_backward(grad_hidden, grad_weight if grad_weight is not None else torch.empty(0))
        ctx.weight_dtype = weight.dtype
        ctx.has_grad_weight = grad_weight is not None
        return total

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        gw = (grad_weight * grad_output).to(ctx.weight_dtype) if ctx.has_grad_weight else None
        return grad_hidden * grad_output.to(grad_hidden.dtype), gw, None, None


def fused_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                               chunk: int = 2048) -> torch.Tensor:
    """Sum over tokens of cross_entropy(hidden @ weight.T, targets), without materialising all the logits."""
    return _FusedLinearCrossEntropy.apply(hidden, weight, targets, chunk)


def plain_linear_cross_entropy(hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor) -> torch.Tensor:
    """The reference: full logits through the head module (any module, e.g. one wrapped by peft)."""
    return F.cross_entropy(head(hidden).float(), targets, reduction="sum")


def decoder_and_head(model) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The decoder stack (hidden states out) and the output head of a (peft-wrapped) causal LM."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base, base.base_model_prefix), base.get_output_embeddings()


def _hidden_at_targets(model, input_ids: torch.Tensor, position_ids: torch.Tensor, targets: torch.Tensor):
    """The decoder's hidden states at the positions whose target is not -100, those targets, and the head.

    No attention mask is passed: transformers then reads the restarts of ``position_ids`` as sequence
    boundaries (block-diagonal mask for sdpa/eager/flex, cu_seqlens for flash-attention), which is what keeps
    packed records apart (tests/tasks/train/test_packing_isolation.py fails if it stops doing so).
    """
    decoder, head = decoder_and_head(model)
    hidden = decoder(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state
    flat_targets = targets.reshape(-1)
    keep = flat_targets != IGNORE_INDEX
    return hidden.reshape(-1, hidden.shape[-1])[keep], flat_targets[keep], keep, head


def causal_lm_loss_sum(model, input_ids: torch.Tensor, position_ids: torch.Tensor, targets: torch.Tensor,
                       fused: bool, chunk: int = 2048) -> torch.Tensor:
    """Summed next-token loss over the positions whose target is not -100 (targets are already shifted).

    The head runs only on those positions: prompt tokens and padding never reach the vocabulary projection.
    """
    hidden, flat_targets, _, head = _hidden_at_targets(model, input_ids, position_ids, targets)
    if hidden.shape[0] == 0:
        return hidden.sum() * 0.0  # keeps the graph (and DDP's collectives) intact on an all-prompt batch
    if fused and isinstance(head, torch.nn.Linear) and head.bias is None:
        return fused_linear_cross_entropy(hidden, head.weight, flat_targets, chunk)
    return plain_linear_cross_entropy(hidden, head, flat_targets)


def causal_lm_token_losses(model, input_ids: torch.Tensor, position_ids: torch.Tensor,
                           targets: torch.Tensor) -> torch.Tensor:
    """The per-token losses that ``causal_lm_loss_sum`` adds up, shaped like ``targets`` (NaN where -100):
    the same decoder call and target selection, the plain head, no reduction."""
    hidden, flat_targets, keep, head = _hidden_at_targets(model, input_ids, position_ids, targets)
    out = torch.full(keep.shape, float("nan"), device=hidden.device)
    out[keep] = F.cross_entropy(head(hidden).float(), flat_targets, reduction="none")
    return out.view(targets.shape)


def use_fused_loss(tc: TrainConfig, device: torch.device) -> bool:
    """Whether the chunked linear + cross-entropy replaces the full logits (always on CUDA under ``auto``)."""
    return tc.loss == "chunked" or (tc.loss == "auto" and device.type == "cuda")


@torch.no_grad()
def mean_eval_loss(model, rows: list[TrainingRow], tc: TrainConfig, pad_id: int, device: torch.device,
                   fused: bool) -> float:
    """Mean per-token loss over the eval split (the same tokens every time); NaN when it has no loss tokens."""
    was_training = model.training
    model.eval()
    total, n = 0.0, 0
    mine = rows[dist_rank()::dist_world()]  # each rank scores its share; the sums are added up below
    batches = list(eval_batches(mine, tc.micro_batch_size, tc.batch_layout, pad_id, tc.eval_max_batches,
                                tc.pad_to_multiple_of))
    runs = forwards_to_run(model, len(batches), device)  # sharded: spare, uncounted batches until all match
    spare = None if runs == len(batches) else \
        next(eval_batches(rows, tc.micro_batch_size, tc.batch_layout, pad_id, 1, tc.pad_to_multiple_of))
    for i in range(runs):
        b = (batches[i] if i < len(batches) else spare).to(device)
        part = float(run_on(model, causal_lm_loss_sum, b.input_ids, b.position_ids, b.targets, fused,
                            tc.loss_chunk_tokens))
        if i < len(batches):
            total += part
            n += b.n_loss_tokens
    if dist_world() > 1:
        total, n = all_reduce_floats([total, float(n)], device)
    model.train(was_training)
    return total / n if n else float("nan")
