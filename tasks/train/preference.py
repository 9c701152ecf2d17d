"""The training recipe for ``train.objective: dpo | kto``: the SFT recipe's setup, optimizer, schedule,
checkpoints, resume and outputs (tasks.train.recipe), with a preference loss in place of the token loss.

The reference model is the base itself: the policy's forward under peft's ``disable_adapter()``, without
gradients, so no second copy of the weights is held. Reference log-probs never change, so the held-out pairs'
are computed once at setup, and with ``train.preference.precompute_ref`` the training pairs' too (one forward
pass per pair instead of one per visit; measured in bench/preference/). Each optimizer step averages the
per-pair (DPO) or per-example (KTO) losses over the whole step, and logs what TRL logs: rewards/chosen,
rewards/rejected, rewards/accuracies, rewards/margins, logps/chosen, logps/rejected (and kl for KTO).
"""
from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

import torch
from prefect import task

from schemas.pipeline import PipelineConfig
from tasks.core.stage import StageOutput
from tasks.train.checkpoint import load_latest_checkpoint, save_checkpoint
from tasks.train.data import DataCursor
from tasks.train.dist import all_reduce_floats, dist_rank, dist_world
from tasks.train.loss import use_fused_loss
from tasks.train.model import (
    add_adapter,
    compile_layers,
    enable_checkpointing,
    load_base_model,
    load_base_tokenizer,
    resolve_device,
    set_cpu_threads,
)
from tasks.train.preference_data import (
    PairRow,
    UnpairedRow,
    kto_batches,
    load_pair_rows,
    load_unpaired_rows,
    pair_batch,
)
from tasks.train.preference_loss import PreferenceLoss, dpo_loss, kto_kl, kto_loss, sequence_logps
from tasks.train.recipe import (
    MetricsFn,
    _sum_gradients,
    adapter_key,
    lr_lambda,
    make_optimizer,
    mlflow_metrics_logger,
    save_outputs,
    with_progress_artifact,
)

REF_CACHE = "reference_logps.pt"


class Scorer:
    """Summed response log-probs of rows, with the adapter (policy) or without it (reference)."""

    def __init__(self, model, cfg: PipelineConfig, pad_id: int, device: torch.device):
        self.model, self.tc, self.pad_id, self.device = model, cfg.train, pad_id, device
        self.fused = use_fused_loss(cfg.train, device)

    def _logps(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        b = batch.to(self.device)
        return sequence_logps(self.model, b.input_ids, b.position_ids, b.targets, b.seq_index, b.n_seqs,
                              self.fused, self.tc.loss_chunk_tokens)

    def pairs(self, rows: list[PairRow], reference: bool = False) -> tuple[torch.Tensor, ...]:
        """(chosen logps, rejected logps, chosen tokens, rejected tokens)."""
        batch = pair_batch(rows, self.tc.batch_layout, self.pad_id, self.tc.pad_to_multiple_of)
        with self._mode(reference):
            sums, counts = self._logps(batch)
        m = len(rows)
        return sums[:m], sums[m:], counts[:m], counts[m:]

    def unpaired(self, rows: list[UnpairedRow], reference: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(logps of the examples, logps of their KL sequences); TRL scores the KL sequences without grad."""
        main, kl = kto_batches(rows, self.tc.batch_layout, self.pad_id, self.tc.pad_to_multiple_of)
        with self._mode(reference):
            logps, _ = self._logps(main)
            with torch.no_grad():
                kl_logps, _ = self._logps(kl)
        return logps, kl_logps

    def _mode(self, reference: bool) -> contextlib.AbstractContextManager:
        """The reference is the base: no grad, adapter off."""
        if not reference:
            return contextlib.nullcontext()
        stack = contextlib.ExitStack()
        stack.enter_context(torch.no_grad())
        stack.enter_context(self.model.disable_adapter())
        return stack


def reference_logps(scorer: Scorer, rows: list, paired: bool, batch_rows: int) -> list[tuple[float, ...]]:
    """Per row: (ref chosen, ref rejected) for pairs, (ref logp,) for KTO examples."""
    out: list[tuple[float, ...]] = []
    for start in range(0, len(rows), batch_rows):
        chunk = rows[start:start + batch_rows]
        if paired:
            c, r, _, _ = scorer.pairs(chunk, reference=True)
            out += list(zip(c.tolist(), r.tolist()))
        else:
            logps, _ = scorer.unpaired(chunk, reference=True)
            out += [(v,) for v in logps.tolist()]
    return out


def objective_loss(scorer: Scorer, rows: list, cfg: PipelineConfig, ref: list[tuple[float, ...]] | None
                   ) -> tuple[PreferenceLoss, dict[str, float]]:
    """The loss terms of one micro-batch and its metric sums; ``ref`` holds cached reference log-probs."""
    pc = cfg.train.preference
    dev = scorer.device
    if cfg.train.objective == "dpo":
        c, r, nc, nr = scorer.pairs(rows)
        if ref is None:
            rc, rr, _, _ = scorer.pairs(rows, reference=True)
        else:
            rc = torch.tensor([x[0] for x in ref], device=dev)
            rr = torch.tensor([x[1] for x in ref], device=dev)
        out = dpo_loss(c, r, rc, rr, pc.beta, pc.dpo_loss, nc, nr)
        sums = {"n_chosen": len(rows), "n_rejected": len(rows), "logps_chosen": float(c.detach().sum()),
                "logps_rejected": float(r.detach().sum()),
                "correct": float((out.chosen_rewards > out.rejected_rewards).sum()),
                "margins": float((out.chosen_rewards - out.rejected_rewards).sum())}
    else:
        logps, kl_logps = scorer.unpaired(rows)
        ref_logps, ref_kl = scorer.unpaired(rows, reference=True)
        desirable = torch.tensor([r.desirable for r in rows], device=dev)
        kl = kto_kl(kl_logps, ref_kl)
        if dist_world() > 1:  # TRL gathers the KL estimate across processes
            kl = torch.tensor(all_reduce_floats([float(kl)], dev)[0] / dist_world(), device=dev).clamp(min=0)
        out = kto_loss(logps, ref_logps, desirable, kl, pc.beta, pc.desirable_weight, pc.undesirable_weight)
        sums = {"n_chosen": int(desirable.sum()), "n_rejected": int((~desirable).sum()),
                "logps_chosen": float(logps.detach()[desirable].sum()),
                "logps_rejected": float(logps.detach()[~desirable].sum()), "kl": float(kl)}
    sums["loss"] = float(out.losses.detach().sum())
    sums["n"] = len(rows)
    sums["rewards_chosen"] = float(out.chosen_rewards.sum())
    sums["rewards_rejected"] = float(out.rejected_rewards.sum())
    return out, sums


def step_metrics(sums: dict[str, float], kto: bool) -> dict[str, float]:
    """TRL's metric names from the summed micro-batch values of one step (or one evaluation)."""
    def div(a: str, b: str) -> float:
        return sums[a] / sums[b] if sums.get(b) else float("nan")
    m = {"loss": div("loss", "n"), "rewards/chosen": div("rewards_chosen", "n_chosen"),
         "rewards/rejected": div("rewards_rejected", "n_rejected"),
         "logps/chosen": div("logps_chosen", "n_chosen"), "logps/rejected": div("logps_rejected", "n_rejected")}
    m["rewards/margins"] = m["rewards/chosen"] - m["rewards/rejected"]
    if kto:
        m["kl"] = sums["kl"] / max(sums.get("n_micro", 1), 1)
    else:
        m["rewards/accuracies"] = div("correct", "n")
    return m


def _add(total: dict[str, float], part: dict[str, float]) -> None:
    for k, v in part.items():
        total[k] = total.get(k, 0.0) + v
    total["n_micro"] = total.get("n_micro", 0) + 1


@torch.no_grad()
def evaluate_rows(scorer: Scorer, rows: list, cfg: PipelineConfig, ref: list[tuple[float, ...]]) -> dict[str, float]:
    """The objective's loss and TRL's reward metrics over held-out rows, in fixed micro-batches."""
    was = scorer.model.training
    scorer.model.eval()
    total: dict[str, float] = {}
    mb = cfg.train.micro_batch_size
    rank, world = dist_rank(), dist_world()
    starts = list(range(0, len(rows), mb))[rank::world]
    for start in starts:
        chunk = rows[start:start + mb]
        _, sums = objective_loss(scorer, chunk, cfg, ref[start:start + mb] if cfg.train.objective == "dpo" else None)
        _add(total, sums)
    if world > 1:
        keys = sorted(total)
        total = dict(zip(keys, all_reduce_floats([total[k] for k in keys], scorer.device)))
    scorer.model.train(was)
    return step_metrics(total, cfg.train.objective == "kto") if total.get("n") else {}


def train_preference_adapter(tokenized_dir: Path, base: str, cfg: PipelineConfig, out: Path,
                             log_metrics: MetricsFn | None = None) -> dict:
    """DPO / KTO adapter on ``tokenized_dir/train`` (tasks.preference.tokenize); outputs and resume as
    ``tasks.train.recipe.train_adapter``."""
    threads = torch.get_num_threads()
    try:
        return _train(Path(tokenized_dir), base, cfg, Path(out), log_metrics)
    finally:
        torch.set_num_threads(threads)


def _train(tokenized_dir: Path, base: str, cfg: PipelineConfig, out: Path, log_metrics: MetricsFn | None) -> dict:
    if (out / "_SUCCESS").is_file():
        return json.loads((out / "metrics.json").read_text())
    tc, pc = cfg.train, cfg.train.preference
    paired, kto = tc.objective == "dpo", tc.objective == "kto"
    log = log_metrics or (lambda metrics, step: None)
    rank, world = dist_rank(), dist_world()
    device = resolve_device(tc)

    # --- setup (as the SFT recipe)
    load = load_pair_rows if paired else load_unpaired_rows
    train_rows, eval_rows = load(tokenized_dir / "train"), load(tokenized_dir / "eval")
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
        torch.set_float32_matmul_precision("high")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, tc, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(tc))
    cursor = DataCursor(seed=tc.seed)
    set_cpu_threads(model, device, tc.cpu_threads)
    scorer = Scorer(model, cfg, pad_id, device)
    model.eval()  # reference log-probs without dropout
    eval_ref = reference_logps(scorer, eval_rows, paired, tc.micro_batch_size) if paired else []
    train_ref = _cached_train_ref(scorer, train_rows, out, paired and pc.precompute_ref, tc.micro_batch_size)
    progress: dict[str, Any] = {"step": 0, "tokens": 0, "best_eval_loss": float("inf"), "bad_evals": 0,
                                "train_loss": float("nan"), "eval_loss": float("nan"), "stopped_early": False}
    resumed = load_latest_checkpoint(out / "checkpoints", model, optimizer, scheduler)
    if resumed is not None:
        progress.update(resumed)
        cursor.load_state_dict(progress.pop("cursor"))

    # --- train
    model.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    speeds: list[float] = []
    last_eval: dict[str, float] = {}
    while progress["step"] < tc.max_steps and not progress["stopped_early"]:
        t0 = time.perf_counter()
        micro = _step_rows(train_rows, cursor, tc.micro_batch_size, tc.grad_accum, tc.tokens_per_step, world)
        n_units = float(sum(len(m) for m in micro))  # every rank's pairs (or examples) of this step
        n_tokens = 0.0
        sums: dict[str, float] = {}
        for indices in micro:
            mine = indices[rank::world] if world > 1 else indices
            rows = [train_rows[i] for i in mine]
            n_tokens += sum(r.n_tokens for r in rows)
            ref = [train_ref[i] for i in mine] if train_ref is not None else None
            loss, part = objective_loss(scorer, rows, cfg, ref)
            (loss.losses.sum() / n_units).backward()
            _add(sums, part)
        if world > 1:
            _sum_gradients(params)
            keys = sorted(sums)
            sums = dict(zip(keys, all_reduce_floats([sums[k] for k in keys], device)))
            n_tokens = all_reduce_floats([n_tokens], device)[0]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, tc.max_grad_norm)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        elapsed = time.perf_counter() - t0
        m = step_metrics(sums, kto)
        progress["step"] += 1
        progress["tokens"] += int(n_tokens)
        progress["train_loss"] = m["loss"]
        step = progress["step"]
        metrics = {"train_loss": m.pop("loss"), **m, "lr": lr, "grad_norm": float(grad_norm),
                   "tokens_per_s": n_tokens / elapsed, "step_s": elapsed}
        speeds.append(metrics["tokens_per_s"])
        if device.type == "cuda":
            metrics["gpu_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        if rank == 0:
            log(metrics, step)
        if eval_rows and (step % tc.eval_every == 0 or step == tc.max_steps):
            last_eval = _evaluate(scorer, eval_rows, cfg, eval_ref, progress, log, rank)
        if step % tc.save_every == 0 and step < tc.max_steps and not progress["stopped_early"] and rank == 0:
            save_checkpoint(out / "checkpoints", step, model, optimizer, scheduler,
                            {**progress, "cursor": cursor.state_dict()}, keep=tc.keep_checkpoints)
    if eval_rows and not last_eval:  # resumed at the very end, or stopped early before an evaluation
        last_eval = _evaluate(scorer, eval_rows, cfg, eval_ref, progress, log, rank)

    # --- save
    result = {"objective": tc.objective, "train_loss": progress["train_loss"], "eval_loss": progress["eval_loss"],
              "steps": progress["step"], "tokens": progress["tokens"], "stopped_early": progress["stopped_early"],
              "adapter_dir": str(out / "adapter"), "base": base, "world_size": world,
              **{f"eval_{k.replace('/', '_')}": v for k, v in last_eval.items() if k != "loss"}}
    if speeds:
        steady = sorted(speeds[3:] or speeds)
        result["tokens_per_s"] = steady[len(steady) // 2]
    if device.type == "cuda":
        result["gpu_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    if rank == 0:
        save_outputs(model, tokenizer, cfg, base, out, result)
    return result


def _evaluate(scorer, eval_rows, cfg, eval_ref, progress, log, rank) -> dict[str, float]:
    m = evaluate_rows(scorer, eval_rows, cfg, eval_ref)
    loss = m.get("loss", float("nan"))
    progress["eval_loss"] = loss
    if rank == 0:
        log({"eval_loss": loss, **{f"eval_{k}": v for k, v in m.items() if k != "loss"}}, progress["step"])
    if loss < progress["best_eval_loss"]:
        progress["best_eval_loss"], progress["bad_evals"] = loss, 0
    else:
        progress["bad_evals"] += 1
        patience = cfg.train.early_stop_patience
        if patience is not None and progress["bad_evals"] >= patience:
            progress["stopped_early"] = True
    return m


def _step_rows(rows: list, cursor: DataCursor, micro: int, grad_accum: int, tokens_per_step: int | None,
               world: int) -> list[list[int]]:
    """Row indices of each micro-batch of one step, for all ranks (each keeps ``indices[rank::world]``)."""
    out, total = [], 0
    while True:
        indices = cursor.take(len(rows), micro * world)
        out.append(indices)
        total += sum(rows[i].n_tokens for i in indices)
        if (tokens_per_step is None and len(out) >= grad_accum) or (tokens_per_step is not None
                                                                     and total >= tokens_per_step):
            return out


def _cached_train_ref(scorer: Scorer, rows: list, out: Path, enabled: bool, batch_rows: int
                      ) -> list[tuple[float, ...]] | None:
    """The training pairs' reference log-probs, computed once and kept beside the checkpoints (a resumed run
    reads them back instead of scoring every pair again)."""
    if not enabled:
        return None
    path = out / REF_CACHE
    if path.is_file():
        cached = torch.load(path, weights_only=True)
        if len(cached) == len(rows):
            return [tuple(x) for x in cached.tolist()]
    ref = reference_logps(scorer, rows, True, batch_rows)
    if dist_rank() == 0:
        out.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(torch.tensor(ref, dtype=torch.float64), tmp)
        tmp.replace(path)
    return ref


@task(name="train")
def preference_train_task(tokenized: StageOutput, base: str, cfg: PipelineConfig, run_id: str | None) -> dict:
    """Prefect wrapper, as ``tasks.train.recipe.train_task``: trains into ``workdir/adapters/<key>`` (reused when
    complete, resumed when not), through torchrun when there are several GPUs."""
    from tasks.train.launch import launch_distributed, num_processes

    nproc = num_processes(cfg)
    out = Path(cfg.workdir) / "adapters" / adapter_key(tokenized, base, cfg, nproc)
    out.mkdir(parents=True, exist_ok=True)
    if nproc > 1 and not (out / "_SUCCESS").is_file():
        return launch_distributed(tokenized.path, base, cfg, out, run_id, nproc)
    log = with_progress_artifact(mlflow_metrics_logger(run_id), cfg.train.max_steps)
    return train_preference_adapter(tokenized.path, base, cfg, out, log)
