"""The SFT recipe: LoRA/QLoRA on the tokenized split, top to bottom (setup, train, save), torchtune style.

The loop itself (setup, accumulation, clipping, the optimizer step, evaluation, checkpoints, FSDP) is
``tasks.train.loop``, shared with DPO/KTO; this module says what an SFT step is: micro-batches of packed rows
(a count or a token budget), the token loss summed per micro-batch and averaged over the step's loss tokens
on every rank, the held-out token loss. With several processes (torchrun) each rank takes its share of every
step's rows; ``train.parallel`` picks DDP (gradients summed) or FSDP (every weight sharded).
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from prefect import task

from schemas.pipeline import PipelineConfig
from tasks.core.stage import StageOutput, code_version, digest
from tasks.train.data import DataCursor, load_rows, micro_batches_for_step
from tasks.train.dist import all_reduce_floats
from tasks.train.fsdp import run_on
from tasks.train.loop import MetricsFn, Trainer, finish, run_loop, setup_trainer
from tasks.train.loss import causal_lm_loss_sum, mean_eval_loss, use_fused_loss
from tasks.train.model import count_matmul_params, load_base_tokenizer, resolve_device
from tasks.train.step_log import step_logger


class SFTObjective:
    """Next-token loss on the response tokens; the step's loss is averaged over all ranks' loss tokens."""

    def __init__(self, trainer: Trainer, cfg: PipelineConfig, train_rows: list, eval_rows: list, pad_id: int):
        self.trainer, self.tc, self.pad_id = trainer, cfg.train, pad_id
        self.train_rows, self.eval_rows = train_rows, eval_rows
        self.fused = use_fused_loss(cfg.train, trainer.device)
        # LoRA: forward 2N + input gradients 2N, no weight gradients
        self.flops_per_token = 4 * count_matmul_params(trainer.peft)

    def step_batches(self, cursor: DataCursor) -> tuple[list, float, float]:
        tc, t = self.tc, self.trainer
        micro = micro_batches_for_step(self.train_rows, cursor, tc.micro_batch_size, tc.grad_accum,
                                       tc.tokens_per_step, tc.batch_layout, self.pad_id, t.rank, t.world,
                                       tc.pad_to_multiple_of)
        n_loss, n_tokens = float(sum(b.n_loss_tokens for b in micro)), float(sum(b.n_tokens for b in micro))
        if t.world > 1:
            (n_loss,) = all_reduce_floats([n_loss], t.device)
        return micro, n_loss, n_tokens

    def loss(self, batch) -> tuple[torch.Tensor, dict[str, Any]]:
        b = batch.to(self.trainer.device)
        part = run_on(self.trainer.model, causal_lm_loss_sum, b.input_ids, b.position_ids, b.targets, self.fused,
                      self.tc.loss_chunk_tokens)
        return part, {"loss": part.detach()}  # summed on the device; read once per step

    def metrics(self, sums: dict[str, float], denom: float) -> dict[str, float]:
        return {"train_loss": sums["loss"] / max(denom, 1.0)}

    def evaluate(self) -> dict[str, float]:
        if not self.eval_rows:
            return {}
        t = self.trainer
        return {"eval_loss": mean_eval_loss(t.model, self.eval_rows, self.tc, self.pad_id, t.device, self.fused)}


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
    train_rows = load_rows(tokenized_dir / "train")
    eval_rows = load_rows(tokenized_dir / "eval")
    if not train_rows:
        raise ValueError(f"no training rows in {tokenized_dir / 'train'}")
    tokenizer = load_base_tokenizer(base, cfg.model, cfg.tokenize.chat_template)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    trainer = setup_trainer(cfg, base, resolve_device(cfg.train))
    objective = SFTObjective(trainer, cfg, train_rows, eval_rows, pad_id)
    loop = run_loop(trainer, objective, cfg, out, log_metrics or (lambda metrics, step: None), cfg.train.seed)
    return finish(trainer, tokenizer, cfg, base, out, loop)


def adapter_key(tokenized: StageOutput, base: str, cfg: PipelineConfig, nproc: int = 1) -> str:
    """The trained adapter's cache key: data, base, model and adapter settings, and the train settings that
    change what is learned (``TrainConfig.cache_settings``). Ranks count only where they change the batch:
    without ``tokens_per_step`` each rank adds micro-batches to every step."""
    ranks = nproc if cfg.train.tokens_per_step is None else 1
    return digest("train", code_version("tasks.train"), tokenized.key, base, cfg.model, cfg.adapter,
                  cfg.train.cache_settings(), ranks)


def train_in_task(tokenized: StageOutput, base: str, cfg: PipelineConfig, run_id: str | None,
                  train: Callable[..., dict]) -> dict:
    """A train task's body, for either objective: ``train(tokenized_dir, base, cfg, out, log)`` into
    ``workdir/adapters/<key>`` (reused when complete, resumed when not) with the background step logger; with
    several GPUs (or ``train.num_processes`` > 1) data-parallel ranks through torchrun instead."""
    from tasks.train.launch import launch_distributed, num_processes, world_size

    nproc = num_processes(cfg)
    out = Path(cfg.workdir) / "adapters" / adapter_key(tokenized, base, cfg, world_size(cfg, nproc))
    out.mkdir(parents=True, exist_ok=True)
    if world_size(cfg, nproc) > 1 and not (out / "_SUCCESS").is_file():
        return launch_distributed(tokenized.path, base, cfg, out, run_id, nproc)
    with step_logger(run_id, cfg.train.max_steps) as log:  # the loop never waits for MLflow or the Prefect API
        return train(tokenized.path, base, cfg, out, log)


@task(name="train")
def train_task(tokenized: StageOutput, base: str, cfg: PipelineConfig, run_id: str | None) -> dict:
    """Prefect wrapper of ``train_in_task`` for SFT."""
    return train_in_task(tokenized, base, cfg, run_id, train_adapter)
