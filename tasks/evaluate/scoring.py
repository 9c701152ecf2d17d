"""Task-level scores of base and base + adapter on every eval set: generate, score, aggregate per family.

The result is plain JSON (it is cached beside the adapter and read back by the flows): per eval set, the
aggregated metrics of each model (``{"": overall, family: ...}``), the ledger of items (``rows`` read =
``scored`` + ``sum(skipped)``), and every item's prompt, reference and both answers for the MLflow table.
"""
from __future__ import annotations

import logging
import math
from typing import Any

import torch

from schemas.evaluate import EvalConfig
from tasks.evaluate.evalsets import EvalSet
from tasks.evaluate.generation import encode_prompts, generate_answers
from tasks.evaluate.judge import judge_answers
from tasks.evaluate.metrics import aggregate, score_item

log = logging.getLogger(__name__)
MODELS = ("adapter", "base")
# A warning names the config key when more than this share of an eval set cannot be scored.
SKIP_WARN_SHARE = 0.2


def score_set(model, tokenizer, es: EvalSet, cfg: EvalConfig, device: torch.device) -> dict[str, Any]:
    """Answers of the adapter and of the base (peft's ``disable_adapter``) to one eval set, scored."""
    enc = encode_prompts(tokenizer, [it.prompt for it in es.items], cfg.max_prompt_tokens)
    skipped = dict(es.skipped)
    if enc.too_long:
        skipped["prompt_too_long"] = len(enc.too_long)
    items = [es.items[i] for i in enc.kept]
    answers: dict[str, list[str]] = {}
    answers["adapter"] = generate_answers(model, tokenizer, enc.ids, cfg.max_new_tokens, cfg.batch_size, device)
    with model.disable_adapter():
        answers["base"] = generate_answers(model, tokenizer, enc.ids, cfg.max_new_tokens, cfg.batch_size, device)
    families = [it.family for it in items]
    metrics: dict[str, Any] = {}
    item_scores: dict[str, list[dict[str, float]]] = {}
    for name in MODELS:
        scores = [score_item(a, it.reference, cfg.metrics) for a, it in zip(answers[name], items, strict=True)]
        if cfg.judge.enabled and items:
            judged = judge_answers(cfg.judge, [it.prompt for it in items], [it.reference for it in items],
                                   answers[name])
            for s, j in zip(scores, judged.scores, strict=True):
                s["judge_score"] = j
            if judged.failures:
                metrics[f"{name}_judge_failures"] = dict(judged.failures)
                log.warning("eval set %s, %s: %d answers got no judge rating (%s); see evaluate.judge",
                            es.name, name, sum(judged.failures.values()), dict(judged.failures))
        item_scores[name] = scores
        metrics[name] = aggregate(scores, families) if items else {}
    n_skipped = sum(skipped.values())
    if es.rows and n_skipped / es.rows > SKIP_WARN_SHARE:
        key = "evaluate.max_items" if set(skipped) == {"over_max_items"} else (
            "evaluate.max_prompt_tokens" if "prompt_too_long" in skipped else "evaluate.eval_sets")
        log.warning("eval set %s: %d of %d rows not scored (%s); check %s", es.name, n_skipped, es.rows,
                    skipped, key)
    table = [{"id": it.id, "family": it.family or "", "prompt": _last_user(it.prompt), "reference": it.reference,
              "base": b, "adapter": a,
              **{f"adapter_{k}": v for k, v in sa.items()}, **{f"base_{k}": v for k, v in sb.items()}}
             for it, a, b, sa, sb in zip(items, answers["adapter"], answers["base"], item_scores["adapter"],
                                         item_scores["base"], strict=True)]
    return {"name": es.name, "source": es.source, "rows": es.rows, "scored": len(items), "skipped": skipped,
            **metrics, "items": table}


def _last_user(prompt: list[dict]) -> str:
    return next((m["content"] for m in reversed(prompt) if m["role"] == "user"), prompt[-1]["content"])


def score_sets(model, tokenizer, sets: list[EvalSet], cfg: EvalConfig, device: torch.device) -> list[dict]:
    return [score_set(model, tokenizer, es, cfg, device) for es in sets]


def flat_metrics(task_results: list[dict], prefix: str = "task") -> dict[str, float]:
    """``{task/<set>/<metric>, task/<set>/<family>/<metric>}`` for the adapter and ``base_task/...`` for the
    base: MLflow metric names (the UI groups them by the part before the first '/')."""
    out: dict[str, float] = {}
    for res in task_results:
        for model_name, head in (("adapter", prefix), ("base", f"base_{prefix}")):
            for group, row in (res.get(model_name) or {}).items():
                where = f"{head}/{res['name']}" + (f"/{_safe(group)}" if group else "")
                for metric, value in row.items():
                    if isinstance(value, (int, float)) and math.isfinite(value):
                        out[f"{where}/{metric}"] = float(value)
    return out


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "_-. " else "_" for c in name)


def rank_value(task_results: list[dict], metric: str) -> float:
    """The adapter's overall ``metric`` on the first scored eval set (NaN when there is none): what a sweep
    ranks by."""
    for res in task_results:
        value = (res.get("adapter") or {}).get("", {}).get(metric)
        if value is not None:
            return float(value)
    return float("nan")
