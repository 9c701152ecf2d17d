"""The one training loop of every objective (SFT in ``recipe``, DPO/KTO in ``preference``): setup, steps, save.

Setup loads the base (lean QLoRA path: no fp32 upcast), adds the adapter, optional per-layer activation
checkpointing and compilation; under ``train.parallel: fsdp`` it shards the model (``tasks.train.fsdp``), else
bf16 adapter weights get fp32 master copies (``tasks.train.master``). Each optimizer step takes the objective's
micro-batches, backpropagates each one's summed loss divided by the whole step's denominator (loss tokens for
SFT, pairs or examples for DPO/KTO), sums gradients over ranks, clips, steps AdamW and a warm-up + cosine
schedule. Evaluation every N steps with optional early stopping; checkpoints every N steps hold what a killed run
needs to continue the same loss curve. An objective says only what a step's batches are, what a micro-batch's
loss is, what its metrics are and how it evaluates (``Objective``).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import yaml

from schemas.pipeline import PipelineConfig
from schemas.train import TrainConfig
from tasks.core.pause import pause_point
from tasks.train.checkpoint import list_checkpoints, load_latest_checkpoint, save_checkpoint
from tasks.train.data import DataCursor
from tasks.train.dist import all_reduce_floats, dist_rank, dist_world
from tasks.train.fsdp import (
    ShardRoot,
    full_tensor,
    gather_adapter,
    peft_model_of,
    set_gradient_sync,
    shard_model,
)
from tasks.train.master import MasterWeights
from tasks.train.model import (
    add_adapter,
    compile_layers,
    enable_checkpointing,
    load_base_model,
    set_cpu_threads,
)
from tasks.train.step_log import MetricsFn, flush_log

STEP_LOG = "train_log.jsonl"  # rank 0's per-step metrics, one JSON line per step (appended across resumes)
# Dense bf16 datasheet peaks, for MFU. Anything else reports no MFU rather than a made-up one.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "4090": 165e12}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    if os.environ.get("PEFTPIPE_PEAK_TFLOPS"):
        return float(os.environ["PEFTPIPE_PEAK_TFLOPS"]) * 1e12
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def lr_lambda(tc: TrainConfig) -> Callable[[int], float]:
    """Linear warm-up to 1, then a cosine down to ``min_lr_ratio`` at ``max_steps``."""
    def factor(step: int) -> float:
        if step < tc.warmup_steps:
            return (step + 1) / (tc.warmup_steps + 1)
        span = max(1, tc.max_steps - tc.warmup_steps)
        progress = min(1.0, (step - tc.warmup_steps) / span)
        return tc.min_lr_ratio + (1 - tc.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def make_optimizer(params: list[torch.nn.Parameter], tc: TrainConfig, device: torch.device):
    """torch AdamW (fused kernel on CUDA) or bitsandbytes' 8-bit / paged AdamW."""
    if tc.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay, fused=device.type == "cuda")
    try:
        import bitsandbytes as bnb
    except ImportError as exc:
        raise ImportError(f"optimizer {tc.optimizer!r} needs bitsandbytes: pip install bitsandbytes") from exc
    cls = {"adamw_8bit": bnb.optim.AdamW8bit, "paged_adamw": bnb.optim.PagedAdamW,
           "paged_adamw_8bit": bnb.optim.PagedAdamW8bit}[tc.optimizer]
    return cls(params, lr=tc.lr, weight_decay=tc.weight_decay)


def sum_gradients(params: list[torch.nn.Parameter]) -> None:
    """Sum gradients across ranks (the loss is already divided by the global denominator). LoRA gradients are
    small, so one flat all-reduce per step costs little next to the step itself."""
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    torch.distributed.all_reduce(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


@dataclass
class Trainer:
    """What setup builds: the model to call (the FSDP root when sharded), what the optimizer steps, and where."""
    model: torch.nn.Module  # the peft model, or the ShardRoot around it
    master: MasterWeights
    optimizer: Any
    scheduler: Any
    device: torch.device
    rank: int = 0
    world: int = 1

    @property
    def sharded(self) -> ShardRoot | None:
        return self.model if isinstance(self.model, ShardRoot) else None

    @property
    def peft(self):
        return peft_model_of(self.model)


def setup_trainer(cfg: PipelineConfig, base: str, device: torch.device) -> Trainer:
    """Base + adapter (+ checkpointing, compilation, FSDP sharding), the optimizer and the schedule."""
    tc = cfg.train
    world = dist_world()
    shard = tc.parallel == "fsdp" and world > 1
    torch.manual_seed(tc.seed)
    model = add_adapter(load_base_model(cfg.model, cfg.adapter, device, base=base, sharded=shard), cfg.adapter)
    if tc.gradient_checkpointing:
        enable_checkpointing(model, tc.checkpoint_layers)
    if tc.compile:
        compile_layers(model)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 for the fp32 LoRA matmuls
    set_cpu_threads(model, device, tc.cpu_threads)
    runner = shard_model(model, cfg, device) if shard else model
    # Unsharded: the optimizer, clipping and the all-reduce see fp32 masters, the forward and backward the
    # model's weights. Sharded: FSDP's mixed precision does the same with fp32 shards (tasks.train.fsdp).
    master = MasterWeights([(n, p) for n, p in model.named_parameters() if p.requires_grad],
                           tc.master_weights and not shard)
    optimizer = make_optimizer(master.parameters(), tc, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(tc))
    return Trainer(runner, master, optimizer, scheduler, device, dist_rank(), world)


class Objective(Protocol):
    """What differs between SFT, DPO and KTO; the loop does the rest."""
    flops_per_token: float | None  # for MFU, where it is meaningful

    def step_batches(self, cursor: DataCursor) -> tuple[list, float, float]:
        """This rank's micro-batches of one step, the step's loss denominator over all ranks, this rank's tokens."""

    def loss(self, micro: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        """The summed loss of one micro-batch (to be divided by the denominator) and its metric sums."""

    def metrics(self, sums: dict[str, float], denom: float) -> dict[str, float]:
        """A step's metrics from the summed (over micro-batches and ranks) values; ``train_loss`` first."""

    def evaluate(self) -> dict[str, float]:
        """``eval_loss`` and whatever else to log, on the held-out split ({} when there is none)."""


def new_progress() -> dict[str, Any]:
    return {"step": 0, "tokens": 0, "best_eval_loss": float("inf"), "bad_evals": 0,
            "train_loss": float("nan"), "eval_loss": float("nan"), "stopped_early": False}


@dataclass
class LoopResult:
    progress: dict[str, Any]
    speeds: list[float] = field(default_factory=list)  # this process's steps, tokens/s
    loop_tokens_per_s: float | None = None


def _resume(trainer: Trainer, out: Path, cursor: DataCursor, progress: dict[str, Any]) -> None:
    resumed = load_latest_checkpoint(out / "checkpoints", trainer.master, trainer.optimizer, trainer.scheduler,
                                     sharded=trainer.sharded)
    if resumed is not None:
        progress.update(resumed)
        cursor.load_state_dict(progress.pop("cursor"))


def _evaluate(trainer: Trainer, objective: Objective, tc: TrainConfig, progress: dict, log: MetricsFn) -> bool:
    """Evaluate, log, update the early-stopping state; False when there is nothing to evaluate on."""
    m = objective.evaluate()
    if not m:
        return False
    progress["eval_loss"] = loss = m["eval_loss"]
    if trainer.rank == 0:
        log(m, progress["step"])
    if loss < progress["best_eval_loss"]:
        progress["best_eval_loss"], progress["bad_evals"] = loss, 0
    else:
        progress["bad_evals"] += 1
        if tc.early_stop_patience is not None and progress["bad_evals"] >= tc.early_stop_patience:
            progress["stopped_early"] = True
    return True


def _reduce_sums(sums: dict[str, Any], n_tokens: float, trainer: Trainer) -> tuple[dict[str, float], float]:
    keys = sorted(sums)
    values = [float(sums[k]) for k in keys] + [n_tokens]  # float() waits for the device: the timing is honest
    if trainer.world > 1:
        values = all_reduce_floats(values, trainer.device)
    return dict(zip(keys, values[:-1])), values[-1]


def run_loop(trainer: Trainer, objective: Objective, cfg: PipelineConfig, out: Path,
             log: MetricsFn, seed: int) -> LoopResult:
    """Resume from ``out/checkpoints`` if there is one, then train to ``max_steps`` (or an early stop)."""
    tc, model, device, rank = cfg.train, trainer.model, trainer.device, trainer.rank
    params = trainer.master.parameters()
    cursor = DataCursor(seed=seed)
    progress = new_progress()
    _resume(trainer, out, cursor, progress)
    peak = peak_flops(device)
    out.mkdir(parents=True, exist_ok=True)
    step_log = open(out / STEP_LOG, "a") if rank == 0 else None  # noqa: SIM115 (closed below)
    model.train()  # activation checkpointing only applies in training mode
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    speeds: list[float] = []
    evaluated = False
    loop_start, tokens_before = time.perf_counter(), progress["tokens"]  # the loop's own throughput, logging in
    try:
        while progress["step"] < tc.max_steps and not progress["stopped_early"]:
            t0 = time.perf_counter()
            micro, denom, n_tokens = objective.step_batches(cursor)
            sums: dict[str, Any] = {}
            for i, batch in enumerate(micro):
                set_gradient_sync(model, i == len(micro) - 1)  # FSDP: reduce-scatter once per step
                loss, part = objective.loss(batch)
                (loss / max(denom, 1.0)).backward()
                trainer.master.accumulate_grads()
                for k, v in part.items():
                    sums[k] = sums.get(k, 0.0) + v
            if trainer.world > 1 and trainer.sharded is None:
                sum_gradients(params)  # FSDP has reduce-scattered them already
            grad_norm = full_tensor(torch.nn.utils.clip_grad_norm_(params, tc.max_grad_norm))
            lr = trainer.scheduler.get_last_lr()[0]
            trainer.optimizer.step()
            trainer.master.write_back()
            trainer.scheduler.step()
            trainer.optimizer.zero_grad(set_to_none=True)
            sums, n_tokens = _reduce_sums(sums, n_tokens, trainer)
            elapsed = time.perf_counter() - t0
            metrics = objective.metrics(sums, denom)
            progress["step"] += 1
            progress["tokens"] += int(n_tokens)
            progress["train_loss"] = metrics["train_loss"]
            step = progress["step"]
            metrics.update({"lr": lr, "grad_norm": float(grad_norm), "tokens_per_s": n_tokens / elapsed,
                            "step_s": elapsed})
            speeds.append(metrics["tokens_per_s"])
            if peak and objective.flops_per_token:
                metrics["mfu"] = metrics["tokens_per_s"] * objective.flops_per_token / (peak * trainer.world)
            if device.type == "cuda":
                metrics["gpu_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            if step_log is not None:
                log(metrics, step)
                step_log.write(json.dumps({"step": step, **metrics}) + "\n")
                step_log.flush()
            if step % tc.eval_every == 0 or step == tc.max_steps:
                evaluated = _evaluate(trainer, objective, tc, progress, log) or evaluated
            if step % tc.save_every == 0 and step < tc.max_steps and not progress["stopped_early"] and (
                    rank == 0 or trainer.sharded is not None):
                save_checkpoint(out / "checkpoints", step, trainer.master, trainer.optimizer, trainer.scheduler,
                                {**progress, "cursor": cursor.state_dict()}, keep=tc.keep_checkpoints,
                                sharded=trainer.sharded)
                flush_log(log)  # MLflow holds every step up to the checkpoint a killed run resumes from
                pause_point("train.checkpoint", step=step)  # test only: a checkpoint is written, training goes on
        if not evaluated:  # resumed at the very end, or no evaluation fell in this process's steps
            _evaluate(trainer, objective, tc, progress, log)
    finally:
        if step_log is not None:
            step_log.close()
    result = LoopResult(progress, speeds)
    if progress["tokens"] > tokens_before:  # everything the loop did: steps, logging, evals, checkpoints
        result.loop_tokens_per_s = (progress["tokens"] - tokens_before) / (time.perf_counter() - loop_start)
    return result


def finish(trainer: Trainer, tokenizer, cfg: PipelineConfig, base: str, out: Path, loop: LoopResult,
           extra: dict[str, Any] | None = None) -> dict:
    """The result dict, and the outputs written once (rank 0; a sharded adapter is gathered first)."""
    p = loop.progress
    result = {**(extra or {}), "train_loss": p["train_loss"], "eval_loss": p["eval_loss"], "steps": p["step"],
              "tokens": p["tokens"], "stopped_early": p["stopped_early"], "adapter_dir": str(out / "adapter"),
              "base": base, "world_size": trainer.world}
    if loop.loop_tokens_per_s is not None:
        result["loop_tokens_per_s"] = loop.loop_tokens_per_s
    if loop.speeds:  # median after 3 warm-up steps (compilation, allocator growth) when there are enough
        steady = sorted(loop.speeds[3:] or loop.speeds)
        result["tokens_per_s"] = steady[len(steady) // 2]
    if trainer.device.type == "cuda":
        result["gpu_peak_gib"] = torch.cuda.max_memory_allocated(trainer.device) / 2**30
    state = gather_adapter(trainer.model) if trainer.sharded is not None else None  # every rank takes part
    if trainer.rank == 0:
        save_outputs(trainer.peft, tokenizer, cfg, base, out, result, state)
    return result


def save_outputs(model, tokenizer, cfg: PipelineConfig, base: str, out: Path, result: dict,
                 state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """The adapter (safetensors) with its tokenizer, the resolved config, the metrics, then the _SUCCESS marker;
    the optional merged export. ``state_dict``: the gathered weights of a sharded model. Checkpoints go once
    the outputs are complete: nothing is left to resume."""
    tmp = out / f".adapter.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True, **({"state_dict": state_dict} if state_dict else {}))
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out / "adapter", ignore_errors=True)
    os.replace(tmp, out / "adapter")
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    if cfg.train.merged_export:
        from tasks.train.model import export_merged
        result["merged_dir"] = str(export_merged(base, out / "adapter", cfg, out / "merged"))
    (out / "metrics.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "_SUCCESS").write_text("")
    for ckpt in list_checkpoints(out / "checkpoints"):
        shutil.rmtree(ckpt, ignore_errors=True)
