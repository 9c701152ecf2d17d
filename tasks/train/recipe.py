"""The training recipe: LoRA/QLoRA on the tokenized split, top to bottom (setup, train, save), torchtune style.

Setup loads the base (lean QLoRA path: no fp32 upcast), adds the adapter and optional per-layer activation
checkpointing; with bf16 adapter weights the optimizer steps fp32 master copies (``tasks.train.master``).
Each optimizer step accumulates micro-batches (a count or a token budget), averages the loss over the step's
loss tokens, clips, steps AdamW and a warm-up + cosine schedule. Eval loss every N steps and at
the end, with optional early stopping. Checkpoints every N steps hold what a killed run needs to continue the
same loss curve. With several processes (torchrun) gradients are summed across ranks before the step.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from prefect import task

from schemas.pipeline import PipelineConfig
from schemas.train import TrainConfig
from tasks.core.pause import pause_point
from tasks.core.stage import StageOutput, code_version, digest
from tasks.train.checkpoint import list_checkpoints, load_latest_checkpoint, save_checkpoint
from tasks.train.data import DataCursor, load_rows, micro_batches_for_step
from tasks.train.dist import all_reduce_floats, dist_rank, dist_world
from tasks.train.loss import causal_lm_loss_sum, mean_eval_loss, use_fused_loss
from tasks.train.master import MasterWeights
from tasks.train.model import (
    add_adapter,
    compile_layers,
    count_matmul_params,
    enable_checkpointing,
    load_base_model,
    load_base_tokenizer,
    resolve_device,
    set_cpu_threads,
)
from tasks.train.step_log import BackgroundLog

MetricsFn = Callable[[dict[str, float], int], None]
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


def _sum_gradients(params: list[torch.nn.Parameter]) -> None:
    """Sum gradients across ranks (the loss is already divided by the global token count). LoRA gradients are
    small, so one flat all-reduce per step costs little next to the step itself."""
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    torch.distributed.all_reduce(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def train_adapter(tokenized_dir: Path, base: str, cfg: PipelineConfig, out: Path,
                  log_metrics: MetricsFn | None = None) -> dict:
    """Train a LoRA/QLoRA adapter on ``tokenized_dir/train``; write ``out/adapter`` (+ tokenizer) and the
    resolved config; return the final metrics. Resumes from ``out/checkpoints`` when a checkpoint is there;
    returns the saved metrics at once when ``out`` is already complete."""
    threads = torch.get_num_threads()
    try:
        return _train_adapter(Path(tokenized_dir), base, cfg, Path(out), log_metrics)
    finally:
        torch.set_num_threads(threads)  # set_cpu_threads may have changed the process-wide setting


def _train_adapter(tokenized_dir: Path, base: str, cfg: PipelineConfig, out: Path,
                   log_metrics: MetricsFn | None) -> dict:
    if (out / "_SUCCESS").is_file():
        return json.loads((out / "metrics.json").read_text())
    tc = cfg.train
    log = log_metrics or (lambda metrics, step: None)
    rank, world = dist_rank(), dist_world()
    device = resolve_device(tc)

    # --- setup
    train_rows = load_rows(tokenized_dir / "train")
    eval_rows = load_rows(tokenized_dir / "eval")
    if not train_rows:
        raise ValueError(f"no training rows in {tokenized_dir / 'train'}")
    tokenizer = load_base_tokenizer(base, cfg.model, cfg.tokenize.chat_template)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    torch.manual_seed(tc.seed)
    model = add_adapter(load_base_model(cfg.model, cfg.adapter, device, base=base), cfg.adapter)
    if tc.gradient_checkpointing:
        enable_checkpointing(model, tc.checkpoint_layers)
    if tc.compile:
        compile_layers(model)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 for the fp32 LoRA matmuls
    # The optimizer, clipping and the all-reduce see fp32 weights; the forward and backward see the model's.
    master = MasterWeights([(n, p) for n, p in model.named_parameters() if p.requires_grad], tc.master_weights)
    params = master.parameters()
    optimizer = make_optimizer(params, tc, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(tc))
    cursor = DataCursor(seed=tc.seed)
    fused = use_fused_loss(tc, device)
    flops_per_token = 4 * count_matmul_params(model)  # LoRA: forward 2N + input gradients 2N, no weight grads
    set_cpu_threads(model, device, tc.cpu_threads)
    peak = peak_flops(device)
    progress: dict[str, Any] = {"step": 0, "tokens": 0, "best_eval_loss": float("inf"), "bad_evals": 0,
                                "train_loss": float("nan"), "eval_loss": float("nan"), "stopped_early": False}
    resumed = load_latest_checkpoint(out / "checkpoints", master, optimizer, scheduler)
    if resumed is not None:
        progress.update(resumed)
        cursor.load_state_dict(progress.pop("cursor"))

    # --- train
    model.train()  # activation checkpointing only applies in training mode
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    speeds: list[float] = []  # this process's steps, for the median speed in the result
    loop_start, tokens_before = time.perf_counter(), progress["tokens"]  # the loop's own throughput, logging in
    while progress["step"] < tc.max_steps and not progress["stopped_early"]:
        t0 = time.perf_counter()
        micro = micro_batches_for_step(train_rows, cursor, tc.micro_batch_size, tc.grad_accum, tc.tokens_per_step,
                                       tc.batch_layout, pad_id, rank, world, tc.pad_to_multiple_of)
        n_loss, n_tokens = float(sum(b.n_loss_tokens for b in micro)), float(sum(b.n_tokens for b in micro))
        if world > 1:
            n_loss, n_tokens = all_reduce_floats([n_loss, n_tokens], device)
        loss_sum = torch.zeros((), device=device)
        for batch in micro:
            b = batch.to(device)
            part = causal_lm_loss_sum(model, b.input_ids, b.position_ids, b.targets, fused, tc.loss_chunk_tokens)
            (part / max(n_loss, 1.0)).backward()
            master.accumulate_grads()
            loss_sum += part.detach()
        if world > 1:
            _sum_gradients(params)
            torch.distributed.all_reduce(loss_sum)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, tc.max_grad_norm)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        master.write_back()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        train_loss = float(loss_sum) / max(n_loss, 1.0)  # .item() waits for the GPU, so the timing is honest
        elapsed = time.perf_counter() - t0
        progress["step"] += 1
        progress["tokens"] += int(n_tokens)
        progress["train_loss"] = train_loss
        step = progress["step"]
        metrics = {"train_loss": train_loss, "lr": lr, "grad_norm": float(grad_norm),
                   "tokens_per_s": n_tokens / elapsed, "step_s": elapsed}
        speeds.append(metrics["tokens_per_s"])
        if peak:
            metrics["mfu"] = metrics["tokens_per_s"] * flops_per_token / (peak * world)
        if device.type == "cuda":
            metrics["gpu_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        if rank == 0:
            log(metrics, step)
        if step % tc.eval_every == 0 or step == tc.max_steps:
            _evaluate_and_maybe_stop(model, eval_rows, tc, pad_id, device, fused, progress, log, rank)
        if step % tc.save_every == 0 and step < tc.max_steps and not progress["stopped_early"] and rank == 0:
            save_checkpoint(out / "checkpoints", step, master, optimizer, scheduler,
                            {**progress, "cursor": cursor.state_dict()}, keep=tc.keep_checkpoints)
            pause_point("train.checkpoint", step=step)  # test only: a checkpoint is written, training goes on
    if progress["stopped_early"] and math.isnan(progress["eval_loss"]):
        _evaluate_and_maybe_stop(model, eval_rows, tc, pad_id, device, fused, progress, log, rank)

    # --- save
    result = {"train_loss": progress["train_loss"], "eval_loss": progress["eval_loss"], "steps": progress["step"],
              "tokens": progress["tokens"], "stopped_early": progress["stopped_early"],
              "adapter_dir": str(out / "adapter"), "base": base, "world_size": world}
    loop_s = time.perf_counter() - loop_start
    if progress["tokens"] > tokens_before:  # everything the loop did: steps, logging, evals, checkpoints
        result["loop_tokens_per_s"] = (progress["tokens"] - tokens_before) / loop_s
    if speeds:  # median after 3 warm-up steps (compilation, allocator growth) when there are enough
        steady = sorted(speeds[3:] or speeds)
        result["tokens_per_s"] = steady[len(steady) // 2]
    if device.type == "cuda":
        result["gpu_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    if rank == 0:
        save_outputs(model, tokenizer, cfg, base, out, result)
    return result


def _evaluate_and_maybe_stop(model, eval_rows, tc, pad_id, device, fused, progress, log, rank) -> None:
    if not eval_rows:
        return
    loss = mean_eval_loss(model, eval_rows, tc, pad_id, device, fused)
    progress["eval_loss"] = loss
    if rank == 0:
        log({"eval_loss": loss}, progress["step"])
    if loss < progress["best_eval_loss"]:
        progress["best_eval_loss"], progress["bad_evals"] = loss, 0
    else:
        progress["bad_evals"] += 1
        if tc.early_stop_patience is not None and progress["bad_evals"] >= tc.early_stop_patience:
            progress["stopped_early"] = True


def save_outputs(model, tokenizer, cfg: PipelineConfig, base: str, out: Path, result: dict) -> None:
    """The adapter (safetensors) with its tokenizer, the resolved config, the metrics, then the _SUCCESS marker;
    the optional merged export. Checkpoints go once the outputs are complete: nothing is left to resume."""
    tmp = out / f".adapter.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
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


def mlflow_metrics_logger(run_id: str | None) -> MetricsFn | None:
    """Per-step metrics into ``run_id`` through the client API, which needs no active run in this thread."""
    if not run_id:
        return None
    from tasks.track.runs import log_metrics_fn

    return log_metrics_fn(run_id)


def with_progress_artifact(log: MetricsFn | None, max_steps: int) -> MetricsFn | None:
    """Chain a Prefect progress artifact (percent of steps done) onto the per-step logger, inside a run."""
    from tasks.track.artifacts import in_run

    if not in_run():
        return log
    from prefect.artifacts import create_progress_artifact, update_progress_artifact

    artifact = create_progress_artifact(0.0, key="training-progress", description="Optimizer steps done")

    def log_and_report(metrics: dict[str, float], step: int) -> None:
        if log is not None:
            log(metrics, step)
        if "train_loss" in metrics:
            update_progress_artifact(artifact, min(100.0, 100.0 * step / max_steps))
    return log_and_report


def adapter_key(tokenized: StageOutput, base: str, cfg: PipelineConfig, nproc: int = 1) -> str:
    """The trained adapter's cache key: data, base, model and adapter settings, and the train settings that
    change what is learned (``TrainConfig.cache_settings``). Ranks count only where they change the batch:
    without ``tokens_per_step`` each rank adds micro-batches to every step."""
    ranks = nproc if cfg.train.tokens_per_step is None else 1
    return digest("train", code_version("tasks.train"), tokenized.key, base, cfg.model, cfg.adapter,
                  cfg.train.cache_settings(), ranks)


@task(name="train")
def train_task(tokenized: StageOutput, base: str, cfg: PipelineConfig, run_id: str | None) -> dict:
    """Prefect wrapper: trains into ``workdir/adapters/<key>`` (reused when complete, resumed when not); with
    several GPUs (or ``train.num_processes`` > 1) it launches data-parallel ranks through torchrun."""
    from tasks.train.launch import launch_distributed, num_processes

    nproc = num_processes(cfg)
    out = Path(cfg.workdir) / "adapters" / adapter_key(tokenized, base, cfg, nproc)
    out.mkdir(parents=True, exist_ok=True)
    if nproc > 1 and not (out / "_SUCCESS").is_file():
        return launch_distributed(tokenized.path, base, cfg, out, run_id, nproc)
    log = with_progress_artifact(mlflow_metrics_logger(run_id), cfg.train.max_steps)
    if log is None:
        return train_adapter(tokenized.path, base, cfg, out)
    background = BackgroundLog(log)  # the loop never waits for MLflow or the Prefect API
    try:
        result = train_adapter(tokenized.path, base, cfg, out, background)
    except BaseException:
        background.close(reraise=False)  # the training error is the one to report
        raise
    background.close()
    return result
