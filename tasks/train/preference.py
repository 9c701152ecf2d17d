"""The training recipe for ``train.objective: dpo | kto``: the shared loop's setup, optimizer, schedule,
checkpoints, resume, FSDP and outputs (tasks.train.loop), with a preference loss in place of the token loss.

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
from pathlib import Path
from typing import Any

import torch
from prefect import task

from schemas.pipeline import PipelineConfig
from tasks.core.stage import StageOutput
from tasks.train.data import DataCursor
from tasks.train.dist import all_reduce_floats, dist_rank, dist_world
from tasks.train.fsdp import forwards_to_run, peft_model_of, run_on
from tasks.train.loop import MetricsFn, Trainer, finish, run_loop, setup_trainer
from tasks.train.loss import use_fused_loss
from tasks.train.model import load_base_tokenizer, resolve_device
from tasks.train.preference_data import (
    PairRow,
    UnpairedRow,
    kto_batches,
    load_pair_rows,
    load_unpaired_rows,
    pair_batch,
)
from tasks.train.preference_loss import PreferenceLoss, dpo_loss, kto_kl, kto_loss, sequence_logps
from tasks.train.recipe import train_in_task

REF_CACHE = "reference_logps.pt"


class Scorer:
    """Summed response log-probs of rows, with the adapter (policy) or without it (reference)."""

    def __init__(self, model, cfg: PipelineConfig, pad_id: int, device: torch.device):
        # ``model`` is what to call (the FSDP root when sharded); the adapter switch is on the peft model
        self.model, self.tc, self.pad_id, self.device = model, cfg.train, pad_id, device
        self.fused = use_fused_loss(cfg.train, device)

    def _logps(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        b = batch.to(self.device)
        return run_on(self.model, sequence_logps, b.input_ids, b.position_ids, b.targets, b.seq_index, b.n_seqs,
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
        stack.enter_context(peft_model_of(self.model).disable_adapter())
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
    # sharded: spare, uncounted batches until all ranks match (KTO's all-reduced KL included)
    runs = forwards_to_run(scorer.model, len(starts), scorer.device)
    for i in range(runs):
        start = starts[i] if i < len(starts) else 0
        chunk = rows[start:start + mb]
        _, sums = objective_loss(scorer, chunk, cfg, ref[start:start + mb] if cfg.train.objective == "dpo" else None)
        if i < len(starts):
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


class PreferenceObjective:
    """DPO over pairs or KTO over labelled examples; a step's loss is averaged over all ranks' pairs (examples)."""
    flops_per_token = None  # several forwards per pair, with and without the adapter: no honest MFU

    def __init__(self, trainer: Trainer, cfg: PipelineConfig, train_rows: list, eval_rows: list, pad_id: int,
                 out: Path):
        tc = cfg.train
        self.trainer, self.cfg, self.tc = trainer, cfg, tc
        self.train_rows, self.eval_rows = train_rows, eval_rows
        self.paired, self.kto = tc.objective == "dpo", tc.objective == "kto"
        self.scorer = Scorer(trainer.model, cfg, pad_id, trainer.device)
        self.last_eval: dict[str, float] = {}
        trainer.model.eval()  # reference log-probs without dropout
        self.eval_ref = reference_logps(self.scorer, eval_rows, self.paired, tc.micro_batch_size) if self.paired \
            else []
        self.train_ref = _cached_train_ref(self.scorer, train_rows, out, self.paired and tc.preference.precompute_ref,
                                           tc.micro_batch_size)

    def step_batches(self, cursor: DataCursor) -> tuple[list, float, float]:
        t, tc = self.trainer, self.tc
        micro = _step_rows(self.train_rows, cursor, tc.micro_batch_size, tc.grad_accum, tc.tokens_per_step, t.world)
        n_units = float(sum(len(m) for m in micro))  # every rank's pairs (or examples) of this step
        mine = [indices[t.rank::t.world] if t.world > 1 else indices for indices in micro]
        n_tokens = float(sum(self.train_rows[i].n_tokens for indices in mine for i in indices))
        return mine, n_units, n_tokens

    def loss(self, indices: list[int]) -> tuple[torch.Tensor, dict[str, Any]]:
        rows = [self.train_rows[i] for i in indices]
        ref = [self.train_ref[i] for i in indices] if self.train_ref is not None else None
        out, part = objective_loss(self.scorer, rows, self.cfg, ref)
        return out.losses.sum(), {**part, "n_micro": 1}

    def metrics(self, sums: dict[str, float], denom: float) -> dict[str, float]:
        m = step_metrics(sums, self.kto)
        return {"train_loss": m.pop("loss"), **m}

    def evaluate(self) -> dict[str, float]:
        if not self.eval_rows:
            return {}
        self.last_eval = m = evaluate_rows(self.scorer, self.eval_rows, self.cfg, self.eval_ref)
        return {"eval_loss": m.get("loss", float("nan")), **{f"eval_{k}": v for k, v in m.items() if k != "loss"}}

    def result_extras(self) -> dict[str, Any]:
        return {"objective": self.tc.objective,
                **{f"eval_{k.replace('/', '_')}": v for k, v in self.last_eval.items() if k != "loss"}}


def _train(tokenized_dir: Path, base: str, cfg: PipelineConfig, out: Path, log_metrics: MetricsFn | None) -> dict:
    if (out / "_SUCCESS").is_file():
        return json.loads((out / "metrics.json").read_text())
    load = load_pair_rows if cfg.train.objective == "dpo" else load_unpaired_rows
    train_rows, eval_rows = load(tokenized_dir / "train"), load(tokenized_dir / "eval")
    if not train_rows:
        raise ValueError(f"no training rows in {tokenized_dir / 'train'}")
    tokenizer = load_base_tokenizer(base, cfg.model, cfg.tokenize.chat_template)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    trainer = setup_trainer(cfg, base, resolve_device(cfg.train))
    objective = PreferenceObjective(trainer, cfg, train_rows, eval_rows, pad_id, out)
    loop = run_loop(trainer, objective, cfg, out, log_metrics or (lambda metrics, step: None), cfg.train.seed)
    return finish(trainer, tokenizer, cfg, base, out, loop, objective.result_extras())


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
    """Prefect wrapper of ``tasks.train.recipe.train_in_task`` for DPO and KTO."""
    return train_in_task(tokenized, base, cfg, run_id, train_preference_adapter)
