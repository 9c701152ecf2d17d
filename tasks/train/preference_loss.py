"""Preference objectives on sequence log-probabilities: DPO (sigmoid, IPO, hinge) and KTO, as TRL defines them.

``sequence_logps`` sums the log-probability of every token whose target is not -100, per sequence, running the
head only on those tokens. The fused path never builds the full logits: chunk by chunk it computes each token's
log-probability and, at once, its gradient with respect to the hidden state ((onehot - softmax) @ W), so the
backward pass is a per-token scale of that saved gradient, the same trick as tasks.train.loss's fused
cross-entropy. It needs a frozen head (LoRA's usual case); a trained head takes the plain path.

The formulas follow TRL 1.x ``DPOTrainer._compute_loss`` and ``KTOTrainer._compute_loss`` (bench/preference/
compares the two step by step): rewards are ``beta * (logp_policy - logp_reference)``, summed over the response;
IPO averages the log-ratios per response token; KTO's KL term is the detached, batch-mean log-ratio of
mismatched (prompt, other completion) pairs, clamped at 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from schemas.tokenize import IGNORE_INDEX
from tasks.train.loss import decoder_and_head


class _FusedLinearLogProbs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int):
        # hidden (N, H), weight (V, H) frozen, targets (N,) all valid. Returns log p(target) per token (N,) fp32.
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        for start in range(0, hidden.shape[0], chunk):
            h = hidden[start:start + chunk]
            t = targets[start:start + chunk]
            logits = (h @ weight.t()).float()
            lse = torch.logsumexp(logits, dim=-1)
            out[start:start + chunk] = logits.gather(1, t[:, None]).squeeze(1) - lse
            if grad_hidden is not None:
                probs = logits.sub_(lse[:, None]).exp_().neg_()  # d logp / d logits = onehot - softmax
                probs[torch.arange(len(t), device=t.device), t] += 1.0
                grad_hidden[start:start + chunk] = probs.to(hidden.dtype) @ weight
        ctx.save_for_backward(grad_hidden if grad_hidden is not None else torch.empty(0))
        return out

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (grad_hidden,) = ctx.saved_tensors
        return grad_hidden * grad_output[:, None].to(grad_hidden.dtype), None, None, None


def token_logps(hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor, fused: bool,
                chunk: int = 2048) -> torch.Tensor:
    """log p(target) per token (fp32) from hidden states (N, H)."""
    if fused and isinstance(head, torch.nn.Linear) and head.bias is None and not head.weight.requires_grad:
        return _FusedLinearLogProbs.apply(hidden, head.weight, targets, chunk)
    logits = head(hidden).float()
    return logits.gather(1, targets[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)


def sequence_logps(model, input_ids: torch.Tensor, position_ids: torch.Tensor, targets: torch.Tensor,
                   seq_index: torch.Tensor, n_seqs: int, fused: bool, chunk: int = 2048
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-prob of the loss tokens of each sequence (n_seqs,), loss-token count of each).

    ``seq_index`` says which sequence each position belongs to (-1: padding); ``targets`` are already shifted.
    """
    decoder, head = decoder_and_head(model)
    hidden = decoder(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state
    flat_t = targets.reshape(-1)
    keep = flat_t != IGNORE_INDEX
    logps = token_logps(hidden.reshape(-1, hidden.shape[-1])[keep], head, flat_t[keep], fused, chunk)
    owner = seq_index.reshape(-1)[keep]
    sums = torch.zeros(n_seqs, dtype=torch.float32, device=logps.device).index_add(0, owner, logps)
    counts = torch.zeros(n_seqs, dtype=torch.float32, device=logps.device).index_add(
        0, owner, torch.ones_like(logps))
    return sums, counts


@dataclass
class PreferenceLoss:
    """Per-example losses (to be summed) and the detached rewards TRL logs."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    kl: float | None = None


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float, loss_type: str = "sigmoid",
             chosen_tokens: torch.Tensor | None = None, rejected_tokens: torch.Tensor | None = None
             ) -> PreferenceLoss:
    """DPO on summed response log-probs: 'sigmoid' (the paper's), 'hinge' (SLiC), 'ipo' (per-token log-ratios)."""
    chosen_lr = policy_chosen - ref_chosen
    rejected_lr = policy_rejected - ref_rejected
    delta = chosen_lr - rejected_lr
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * delta)
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * delta)
    elif loss_type == "ipo":
        if chosen_tokens is None or rejected_tokens is None:
            raise ValueError("IPO needs the response token counts")
        ipo_delta = chosen_lr / chosen_tokens.clamp(min=1.0) - rejected_lr / rejected_tokens.clamp(min=1.0)
        losses = (ipo_delta - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss {loss_type!r}; use sigmoid, hinge or ipo")
    return PreferenceLoss(losses, beta * chosen_lr.detach(), beta * rejected_lr.detach())


def kto_kl(policy_kl: torch.Tensor, ref_kl: torch.Tensor) -> torch.Tensor:
    """KTO's reference point: the batch-mean log-ratio on mismatched pairs, detached and clamped at 0."""
    return (policy_kl - ref_kl).mean().detach().clamp(min=0)


def kto_loss(policy: torch.Tensor, ref: torch.Tensor, desirable: torch.Tensor, kl: torch.Tensor, beta: float,
             desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> PreferenceLoss:
    """KTO (Eq. 7 of the paper, as TRL computes it); losses are ordered desirable first, then undesirable."""
    logratios = policy - ref
    d, u = logratios[desirable], logratios[~desirable]
    losses = torch.cat([desirable_weight * (1 - torch.sigmoid(beta * (d - kl))),
                        undesirable_weight * (1 - torch.sigmoid(beta * (kl - u)))])
    return PreferenceLoss(losses, beta * d.detach(), beta * u.detach(), float(kl))
