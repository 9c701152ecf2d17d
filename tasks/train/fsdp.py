"""FSDP2 for models larger than one GPU (``train.parallel: fsdp``): every weight sharded over the ranks.

``fully_shard`` is applied per decoder layer, then to a thin root module (``ShardRoot``) that holds the whole
peft model: the embeddings, final norm and output head fall into the root's group. The recipe's loss calls
the decoder and the head directly (to run the head on loss positions only), so it must run *inside* the root's
forward for FSDP to gather the root's weights and to set up its backward: ``run_on(model, fn, ...)`` calls
``fn(peft_model, ...)`` through ``ShardRoot.forward`` when the model is sharded, and directly otherwise.

Mixed precision. Outside FSDP, ``tasks.train.master`` keeps fp32 master copies of bf16 adapter weights and
steps those. Under FSDP the sharded parameters are what the optimizer steps, so the adapter's shards are kept in
fp32 (they *are* the masters) and FSDP2's ``MixedPrecisionPolicy`` all-gathers them in the compute dtype (bf16
on CUDA) for the forward and backward, and reduce-scatters the gradients in fp32: the same arithmetic as bf16
compute copies plus fp32 masters, so ``MasterWeights`` is switched off under FSDP. The frozen base is kept in
the compute dtype and is not cast.

QLoRA: FSDP shards floating-point tensors only, so the packed 4-bit weights are stored as bf16
(``bnb_4bit_quant_storage``, as FSDP-QLoRA by Answer.AI / bitsandbytes PR 970 does). FSDP2 all-gathers a plain
tensor, without the ``Params4bit`` subclass and its quantization state: bitsandbytes' ``Linear4bit`` restores
both from the module (``fix_4bit_weight_quant_state_from_module``), so the state is pinned on each module here.
The packed bytes must never be cast, so a QLoRA decoder layer's group has no ``param_dtype`` and its LoRA
modules (fp32 masters, cast to bf16) get groups of their own: FSDP2 wants one dtype per group.

Gradients: the recipe divides the loss by the whole step's loss tokens and sums gradients over ranks, so the
reduce-scatter sums (divide factor 1, sum-only collectives: gloo has no pre-multiplied sum).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from schemas.pipeline import PipelineConfig
from tasks.train.dist import all_reduce_floats, dist_world


class ShardRoot(torch.nn.Module):
    """The FSDP root: ``forward(fn, *args)`` runs ``fn(model, *args)`` inside the root's hooks."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return fn(self.model, *args, **kwargs)


def run_on(model, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(model, ...)``, through the FSDP root's forward when ``model`` is sharded."""
    if isinstance(model, ShardRoot):
        return model(fn, *args, **kwargs)
    return fn(model, *args, **kwargs)


def forwards_to_run(model, n: int, device: torch.device) -> int:
    """How many forwards this rank runs over its ``n`` held-out batches: ``n``; sharded, every forward is a
    collective, so the ranks agree on the largest count before any forward (the caller runs uncounted spare
    batches up to it)."""
    if isinstance(model, ShardRoot) and dist_world() > 1:
        return int(all_reduce_floats([n], device, op="max")[0])
    return n


def peft_model_of(model):
    """The peft model behind a ``ShardRoot`` (or the model itself)."""
    return model.model if isinstance(model, ShardRoot) else model


def decoder_layers(model) -> list[torch.nn.Module]:
    from transformers.modeling_layers import GradientCheckpointingLayer

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return [m for m in base.modules() if isinstance(m, GradientCheckpointingLayer)]


def _is_4bit(module: torch.nn.Module) -> bool:
    return type(module).__name__ in ("Linear4bit", "Params4bit") or type(
        getattr(module, "weight", None)).__name__ == "Params4bit"


def shard_model(model, cfg: PipelineConfig, device: torch.device) -> ShardRoot:
    """Shard ``model`` (a peft model) over all ranks with FSDP2; return the root to call it through."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    from tasks.train.model import resolve_dtype

    compute = resolve_dtype(cfg.model, device)
    with torch.no_grad():  # the adapter's shards are the fp32 masters (see the module docstring)
        for p in model.parameters():
            if p.requires_grad and p.dtype != torch.float32 and cfg.train.master_weights:
                p.data = p.data.float()
    cast = MixedPrecisionPolicy(param_dtype=None if compute == torch.float32 else compute,
                                reduce_dtype=torch.float32)
    no_cast = MixedPrecisionPolicy(param_dtype=None, reduce_dtype=torch.float32)
    mesh = init_device_mesh(device.type, (dist_world(),))
    for layer in decoder_layers(model):
        quantized = [m for m in layer.modules() if _is_4bit(m)]
        for m in quantized:  # Linear4bit rebuilds Params4bit from these after each all-gather
            m.quant_state = m.weight.quant_state
        if quantized:
            for name, m in layer.named_modules():
                if name.rsplit(".", 1)[-1] in ("lora_A", "lora_B", "lora_magnitude_vector"):
                    for sub in m.values() if isinstance(m, torch.nn.ModuleDict) else [m]:
                        if any(True for _ in sub.parameters()):
                            fully_shard(sub, mesh=mesh, mp_policy=cast)
        fully_shard(layer, mesh=mesh, mp_policy=no_cast if quantized else cast)
    root = ShardRoot(model)
    fully_shard(root, mesh=mesh, mp_policy=cast)
    for m in root.modules():
        if isinstance(m, FSDPModule):  # summed gradients, with sum-only collectives (gloo has no PREMUL_SUM)
            m.set_gradient_divide_factor(1.0)
            m.set_force_sum_reduction_for_comms(True)
    return root


def set_gradient_sync(model, sync: bool) -> None:
    """Reduce-scatter gradients after this backward (the step's last micro-batch) or keep accumulating."""
    if isinstance(model, ShardRoot):
        model.set_requires_gradient_sync(sync)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A DTensor gathered whole (every rank must call it); a plain tensor as it is."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def gather_adapter(model) -> dict[str, torch.Tensor]:
    """The trainable weights gathered whole onto the CPU, by the peft model's parameter names (every rank calls
    it; only the adapter is gathered, never the frozen base). ``save_pretrained(state_dict=...)`` on rank 0 then
    writes the same adapter file as a single-process run."""
    out = {}
    for name, p in peft_model_of(model).named_parameters():
        if p.requires_grad:
            out[name] = full_tensor(p.detach()).cpu()
    return out
