"""What a finished sweep variant leaves in its MLflow run: its final metrics, its answers, its adapter (as
artifacts and as a logged model, so the Models page ranks it too), and its result row for the comparison.

The flow (flows/sweep.py) runs the variant's stages; these functions turn their outputs into the run's record.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow

from schemas.pipeline import PipelineConfig
from tasks.core.stage import StageOutput
from tasks.evaluate.report import log_task_results
from tasks.evaluate.scoring import rank_value
from tasks.sweep.compare import VariantResult
from tasks.track.model_registry import log_adapter_model, model_id_of

PREFERENCE_METRICS = ("pref_reward_accuracy", "pref_mean_margin", "pref_adapter_prefers_chosen",
                      "pref_base_prefers_chosen")


def _log_final(final: dict[str, Any], steps: int) -> None:
    # Logged at the last step so these, not the per-step training history, are what the compare view shows.
    mlflow.log_metrics({k: float(v) for k, v in final.items() if v is not None and v == v}, step=steps)


def _log_adapter(adapter_dir: str, base: str, cfg: PipelineConfig) -> str:
    """The adapter as run artifacts and as a logged (not yet registered) model; its model URI."""
    mlflow.log_artifacts(adapter_dir, artifact_path="adapter")
    return log_adapter_model(Path(adapter_dir), base, cfg, register=False)  # 'best' may register it


def record_sft_variant(name: str, overrides: dict[str, Any], cfg: PipelineConfig, run_id: str, base: str,
                       curated_split: StageOutput, split: StageOutput, trained: dict[str, Any],
                       evaluation: dict[str, Any]) -> VariantResult:
    """Log an SFT variant's final metrics, samples, adapter and task results; its comparison row."""
    steps = int(trained["steps"])
    records_kept, train_records = curated_split.ledger.kept, int(split.ledger.extra["train"])
    _log_final({"eval_loss": evaluation["adapter_eval_loss"], "perplexity": evaluation["adapter_perplexity"],
                "base_eval_loss": evaluation["base_eval_loss"], "base_perplexity": evaluation["base_perplexity"],
                "eval_loss_delta": evaluation["eval_loss_delta"], "records_kept": records_kept,
                "train_records": train_records, "eval_records": int(split.ledger.extra["eval"]),
                "train_loss": trained["train_loss"], "tokens": trained["tokens"],
                "max_abs_logit_diff": evaluation["max_abs_logit_diff"],
                "task_score": rank_value(evaluation.get("task") or [], cfg.evaluate.rank_metric)}, steps)
    if evaluation["samples"]:
        samples = evaluation["samples"]
        mlflow.log_table({k: [s[k] for s in samples] for k in ("prompt", "base", "adapter")},
                         artifact_file="samples.json")
    model_uri = _log_adapter(trained["adapter_dir"], base, cfg)
    log_task_results(evaluation, cfg.name, model_id_of(model_uri), step=steps, table_rows=cfg.evaluate.table_rows)
    return VariantResult(name, overrides, run_id, curated_split.key[:8], records_kept, train_records,
                         {**trained, **evaluation}, evaluation["samples"], cfg.adapter.method, model_uri)


def record_preference_variant(name: str, overrides: dict[str, Any], cfg: PipelineConfig, run_id: str, base: str,
                              curated_split: StageOutput, pairs: StageOutput, trained: dict[str, Any],
                              evaluation: dict[str, Any]) -> VariantResult:
    """Log a DPO / KTO variant: ranked by the objective's loss on the shared held-out pairs, beside its value
    at the base (``base_eval_loss``); its comparison row."""
    ev = evaluation
    metrics = {**trained, **ev, "adapter_eval_loss": ev.get("pref_eval_loss"),
               "base_eval_loss": ev.get("pref_base_eval_loss"),
               "eval_loss_delta": ev.get("pref_eval_loss", float("nan")) - ev.get("pref_base_eval_loss", float("nan"))}
    records_kept, train_pairs = curated_split.ledger.kept, int(pairs.ledger.extra["train"])
    _log_final({"eval_loss": metrics["adapter_eval_loss"], "base_eval_loss": metrics["base_eval_loss"],
                "eval_loss_delta": metrics["eval_loss_delta"], "records_kept": records_kept,
                "train_pairs": train_pairs, "eval_pairs": int(pairs.ledger.extra["eval"]),
                "train_loss": trained["train_loss"], "tokens": trained["tokens"],
                **{k: v for k, v in ev.items() if k in PREFERENCE_METRICS}}, int(trained["steps"]))
    model_uri = _log_adapter(trained["adapter_dir"], base, cfg)
    return VariantResult(name, overrides, run_id, curated_split.key[:8], records_kept, train_pairs, metrics, [],
                         cfg.adapter.method, model_uri)
