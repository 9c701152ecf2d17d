"""fp32 master weights for an adapter kept in bf16 (or fp16) for compute.

An AdamW step moves a weight by about ``lr`` whatever the gradient's scale. bf16 keeps 8 significant bits, so a
step smaller than half a unit in the last place of the weight (about |w| / 512) rounds back to the weight it
started from and is lost. LoRA's A matrices start at about 1/sqrt(fan_in) (0.016 on an 8B model), so late in a
cosine schedule (lr 2e-5 and below) nearly every update to them is lost (BENCHMARKS.md measures it).

``MasterWeights`` keeps an fp32 copy of each low-precision trainable parameter. The optimizer (and gradient
clipping, and the data-parallel all-reduce) work on the fp32 copies; after each backward the bf16 gradients are
added into fp32 gradients; after each step the fp32 weights are written back, rounded, into the bf16 weights
that the forward and backward passes use. The compute path is untouched, so the speed of bf16 adapter weights
is kept; the adapter is small (about 42M weights on 8B at r=16), so the fp32 copy and its gradient cost little.
"""
from __future__ import annotations

import torch


class MasterWeights:
    """fp32 copies of the low-precision parameters among ``named_params``; fp32 parameters are used as they are."""

    def __init__(self, named_params: list[tuple[str, torch.nn.Parameter]], enabled: bool = True):
        self.names = [n for n, _ in named_params]
        self.model_params = [p for _, p in named_params]
        self.master: list[torch.Tensor] = []
        for p in self.model_params:
            if enabled and p.dtype != torch.float32:
                self.master.append(p.detach().float().clone().requires_grad_(True))
            else:
                self.master.append(p)
        self.active = any(m is not p for m, p in zip(self.master, self.model_params))

    def parameters(self) -> list[torch.Tensor]:
        """What the optimizer steps, gradient clipping clips and data-parallel ranks all-reduce."""
        return self.master

    @torch.no_grad()
    def accumulate_grads(self) -> None:
        """Move the gradients of the last backward into the fp32 gradients (sums across micro-batches in fp32)."""
        for p, m in zip(self.model_params, self.master):
            if m is p or p.grad is None:
                continue
            if m.grad is None:
                m.grad = p.grad.float()
            else:
                m.grad.add_(p.grad)
            p.grad = None

    @torch.no_grad()
    def write_back(self) -> None:
        """Round the stepped fp32 weights into the compute copies."""
        for p, m in zip(self.model_params, self.master):
            if m is not p:
                p.copy_(m)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The trainable weights at full precision, by parameter name (what a checkpoint keeps)."""
        return {n: m.detach().cpu() for n, m in zip(self.names, self.master)}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(state) - set(self.names)
        if missing:
            raise RuntimeError(f"checkpoint has weights this model lacks: {sorted(missing)[:5]}")
        for n, p, m in zip(self.names, self.model_params, self.master):
            if n in state:
                m.copy_(state[n].to(m.device, m.dtype))
                if m is not p:
                    p.copy_(m)
