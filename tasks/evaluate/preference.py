"""Evaluate a DPO / KTO adapter on the held-out pairs (examples), against its base.

DPO, per held-out pair, with r(y) = beta * (log p_adapter(y) - log p_base(y)) summed over the response:
- ``reward_accuracy``: share of pairs with r(chosen) > r(rejected); the base scores 0 here by definition (its
  rewards are all 0, and a tie is not a win), so this measures how far training moved the model;
- ``mean_margin``: mean of r(chosen) - r(rejected);
- ``adapter_prefers_chosen`` / ``base_prefers_chosen``: share of pairs where the model gives the chosen response
  the higher log-likelihood; the difference (``prefers_chosen_gain``) is the adapter's gain over the base on the
  same pairs (also per response token, ``*_per_token``, which removes the pull of length).
KTO: the share of examples whose reward has the sign of their label (``reward_accuracy``), the mean reward of
the desirable and of the undesirable ones, and their difference (``mean_margin``).
Both report ``eval_loss``, the objective on the held-out set, and ``base_eval_loss``, its value at the base
(all rewards 0), which is what a sweep ranks by.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from prefect import task

from schemas.pipeline import PipelineConfig
from tasks.core.stage import StageOutput, digest
from tasks.train.model import load_base_model, load_base_tokenizer, resolve_device, set_cpu_threads
from tasks.train.preference import Scorer
from tasks.train.preference_data import load_pair_rows, load_unpaired_rows
from tasks.train.preference_loss import dpo_loss, kto_kl, kto_loss


def _mean(x: torch.Tensor) -> float:
    return float(x.float().mean()) if x.numel() else float("nan")


@torch.no_grad()
def score_pairs(scorer: Scorer, rows: list, batch_rows: int) -> dict[str, torch.Tensor]:
    """Summed log-probs of both sides with and without the adapter, and response token counts."""
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("pc", "pr", "bc", "br", "nc", "nr")}
    for start in range(0, len(rows), batch_rows):
        chunk = rows[start:start + batch_rows]
        pc, pr, nc, nr = scorer.pairs(chunk)
        bc, br, _, _ = scorer.pairs(chunk, reference=True)
        for k, v in zip(("pc", "pr", "bc", "br", "nc", "nr"), (pc, pr, bc, br, nc, nr)):
            parts[k].append(v.cpu())
    return {k: torch.cat(v) if v else torch.zeros(0) for k, v in parts.items()}


def pair_metrics(s: dict[str, torch.Tensor], beta: float, loss_type: str) -> dict[str, float]:
    out = dpo_loss(s["pc"], s["pr"], s["bc"], s["br"], beta, loss_type, s["nc"], s["nr"])
    at_base = dpo_loss(s["bc"], s["br"], s["bc"], s["br"], beta, loss_type, s["nc"], s["nr"])  # all rewards 0
    per_tok = {k: s[k] / s["n" + k[1]].clamp(min=1) for k in ("pc", "pr", "bc", "br")}
    m = {"pairs": float(len(s["pc"])), "eval_loss": _mean(out.losses), "base_eval_loss": _mean(at_base.losses),
         "reward_accuracy": _mean(out.chosen_rewards > out.rejected_rewards),
         "mean_margin": _mean(out.chosen_rewards - out.rejected_rewards),
         "rewards_chosen": _mean(out.chosen_rewards), "rewards_rejected": _mean(out.rejected_rewards),
         "adapter_prefers_chosen": _mean(s["pc"] > s["pr"]), "base_prefers_chosen": _mean(s["bc"] > s["br"]),
         "adapter_prefers_chosen_per_token": _mean(per_tok["pc"] > per_tok["pr"]),
         "base_prefers_chosen_per_token": _mean(per_tok["bc"] > per_tok["br"])}
    m["prefers_chosen_gain"] = m["adapter_prefers_chosen"] - m["base_prefers_chosen"]
    return m


@torch.no_grad()
def unpaired_metrics(scorer: Scorer, rows: list, cfg: PipelineConfig, batch_rows: int) -> dict[str, float]:
    pc = cfg.train.preference
    rewards, labels, losses, base_losses = [], [], [], []
    for start in range(0, len(rows), batch_rows):
        chunk = rows[start:start + batch_rows]
        pol, pol_kl = scorer.unpaired(chunk)
        ref, ref_kl = scorer.unpaired(chunk, reference=True)
        desirable = torch.tensor([r.desirable for r in chunk], device=pol.device)
        weights = (pc.desirable_weight, pc.undesirable_weight)
        losses.append(kto_loss(pol, ref, desirable, kto_kl(pol_kl, ref_kl), pc.beta, *weights).losses.cpu())
        base_losses.append(kto_loss(ref, ref, desirable, torch.zeros((), device=pol.device), pc.beta,
                                    *weights).losses.cpu())
        rewards.append((pc.beta * (pol - ref)).cpu())
        labels += [r.desirable for r in chunk]
    r = torch.cat(rewards) if rewards else torch.zeros(0)
    d = torch.tensor(labels, dtype=torch.bool)
    m = {"examples": float(len(r)), "reward_accuracy": _mean(torch.where(d, r > 0, r < 0)),
         "eval_loss": _mean(torch.cat(losses)), "base_eval_loss": _mean(torch.cat(base_losses)),
         "rewards_desirable": _mean(r[d]), "rewards_undesirable": _mean(r[~d])}
    m["mean_margin"] = m["rewards_desirable"] - m["rewards_undesirable"]
    return m


def evaluate_preference_adapter(tokenized_dir: Path, base: str, adapter_dir: Path, cfg: PipelineConfig) -> dict:
    """The held-out preference metrics of base + adapter against the base (see the module docstring)."""
    from peft import PeftModel

    threads = torch.get_num_threads()
    try:
        device = resolve_device(cfg.train)
        paired = cfg.train.objective == "dpo"
        rows = (load_pair_rows if paired else load_unpaired_rows)(Path(tokenized_dir) / "eval")
        tokenizer = load_base_tokenizer(base, cfg.model, cfg.tokenize.chat_template)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        model = PeftModel.from_pretrained(load_base_model(cfg.model, cfg.adapter, device, base=base), adapter_dir)
        set_cpu_threads(model, device, cfg.train.cpu_threads)
        model.eval()
        scorer = Scorer(model, cfg, pad_id, device)
        beta, mb = cfg.train.preference.beta, cfg.train.micro_batch_size
        if not rows:
            return {"pref_pairs" if paired else "pref_examples": 0.0}
        m = (pair_metrics(score_pairs(scorer, rows, mb), beta, cfg.train.preference.dpo_loss) if paired
             else unpaired_metrics(scorer, rows, cfg, mb))
        return {f"pref_{k}": v for k, v in m.items()}
    finally:
        torch.set_num_threads(threads)


@task(name="evaluate-preference")
def preference_evaluate_task(tokenized: StageOutput, base: str, adapter_dir: Path, cfg: PipelineConfig) -> dict:
    """Prefect wrapper; the result is kept beside the adapter, keyed by the held-out set, as evaluate_task's."""
    cached = Path(adapter_dir).parent / f"preference-evaluation-{digest(tokenized.key, base)}.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    result = evaluate_preference_adapter(tokenized.path, base, Path(adapter_dir), cfg)
    tmp = cached.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(result))
    os.replace(tmp, cached)
    return result
