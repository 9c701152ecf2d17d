"""The sweep flow: which data and training settings give the best adapter, answered in one run.

One parent MLflow run; under it, one child run per distinct curation setting and one per variant. The steps:

1. Curate once per distinct curation setting (variants that differ only in adapter/train settings share one;
   stage outputs are content-addressed, so a rerun reuses every finished stage).
2. Build one base model + tokenizer from the *reference* curation (the base config with the sweep's shared
   overrides). Every variant trains on it: the offline tiny model learns its tokenizer from the corpus, and
   variants with different tokenizers would have eval losses in different units.
3. Per variant: its training records beside the **shared eval set** (the reference curation's eval split, see
   ``tasks.sweep.compare.shared_eval_split``), tokenize, train, evaluate base vs adapter, log to its child run.
4. Compare: a table ranked by task score (``evaluate.rank_metric`` on the shared eval set; eval loss where no
   variant has one) and a plot of it against records kept, in Prefect and on the parent MLflow run. The best
   variant's adapter is registered with the alias ``best``.

Why the reference curation's eval split: it is the clean data the user starts from, cleaned by the base
filters, and the split hashes record ids, so the same id is held out in every variant. A variant's own eval
split would grade a loose curation on its own noisy records, and an intersection shrinks with every variant
added. Train records that are near-copies of shared eval records are held out of training (leak check).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from prefect import flow, get_run_logger

from flows.curate import CurateResult, curate_flow
from flows.runners import on_runner
from flows.tracked import mlflow_run
from schemas.pipeline import PipelineConfig
from schemas.sweep import SweepConfig, Variant, curation_settings, expand_variants, reference_config
from tasks.core.errors import train_eval_counts
from tasks.core.pause import pause_point
from tasks.core.stage import StageOutput, digest
from tasks.core.storage import local_workdir, with_local_workdir
from tasks.evaluate.leakcheck import holdout_eval_sets_task
from tasks.evaluate.preference import evaluate_preference_adapter
from tasks.evaluate.scoring import rank_value
from tasks.evaluate.stage import evaluate_task
from tasks.preference.tokenize import preference_tokenize_task
from tasks.sweep.compare import VariantResult, publish_comparison, shared_eval_split_task
from tasks.sweep.preference import shared_eval_pairs_task
from tasks.sweep.variant import record_preference_variant, record_sft_variant
from tasks.tokenize.stage import tokenize_task
from tasks.track import runs as tracking
from tasks.track.artifacts import publish_link
from tasks.track.model_registry import BEST_ALIAS, register_with_alias
from tasks.train.model import prepare_base_model_task
from tasks.train.preference import preference_train_task
from tasks.train.recipe import train_task

ROLE = "peftpipe.sweep.role"


@dataclass(frozen=True)
class SweepResult:
    parent_run_id: str
    run_url: str
    rows: list[dict[str, Any]]  # the comparison table, best first
    out_dir: Path  # comparison.{json,md,png}, generations.json
    failed: list[str]  # names of variants that raised
    best_model_version: str | None = None  # "<registered name>/<version>" that the alias 'best' points at

    @property
    def best(self) -> dict[str, Any] | None:
        """The first row: the highest task score, or the lowest eval loss where no variant has a task score
        (rows are sorted; a failed variant sorts last)."""
        return next((r for r in self.rows if r["variant"] not in self.failed), None)


def curation_key(cfg: PipelineConfig) -> str:
    return digest("curation", curation_settings(cfg))


def _with_run_name(cfg: PipelineConfig, name: str) -> PipelineConfig:
    return cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"run_name": name})})


def curate_distinct(configs: list[PipelineConfig], sweep_name: str) -> dict[str, CurateResult]:
    """Run curation once per distinct curation setting, each in a child run of the sweep's run."""
    log = get_run_logger()
    curated: dict[str, CurateResult] = {}
    for cfg in configs:
        key = curation_key(cfg)
        if key in curated:
            continue
        with mlflow.start_run(run_name=f"{sweep_name}/curate-{key[:8]}", nested=True,
                              tags={ROLE: "curation", "peftpipe.sweep": sweep_name, "peftpipe.curation": key[:8]}):
            mlflow.log_params(tracking.flatten(curation_settings(cfg)))
            curated[key] = on_runner(curate_flow, cfg.runner)(cfg)
        train, ev = train_eval_counts(curated[key].split.ledger.extra)
        log.info("curation %s: %s train / %s eval", key[:8], train, ev)
    return curated


def run_variant(variant: Variant, curated: CurateResult, reference: StageOutput, base: str,
                sweep: SweepConfig, run_id: str) -> VariantResult:
    """Train and evaluate one variant into the active (child) MLflow run."""
    cfg = variant.config
    for stage in curated.stages:
        tracking.log_ledger(stage)
    if cfg.train.objective != "sft":
        return run_preference_variant(variant, curated, reference, base, run_id)
    shared = shared_eval_split_task(curated.split, reference, sweep, cfg.workdir)
    split = holdout_eval_sets_task(shared, cfg)  # separate eval sets never reach training
    tokenized = tokenize_task(split, base, cfg)
    for stage in dict.fromkeys((shared, split, tokenized)):
        tracking.log_ledger(stage)
    trained = train_task(tokenized, base, with_local_workdir(cfg), run_id)  # weights on local disk
    evaluation = evaluate_task(tokenized, base, Path(trained["adapter_dir"]), cfg, split, n_samples=sweep.samples)
    return record_sft_variant(variant.name, variant.overrides, cfg, run_id, base, curated.split, split, trained,
                              evaluation)


def run_preference_variant(variant: Variant, curated: CurateResult, reference: StageOutput, base: str,
                           run_id: str) -> VariantResult:
    """A DPO / KTO variant: its training pairs beside the reference's held-out pairs (tasks.sweep.preference)."""
    cfg = variant.config
    pairs = shared_eval_pairs_task(curated.split, reference, cfg.train.objective, cfg.workdir)
    tokenized = preference_tokenize_task(pairs, base, cfg)
    for stage in (pairs, tokenized):
        tracking.log_ledger(stage)
    trained = preference_train_task(tokenized, base, with_local_workdir(cfg), run_id)
    evaluation = evaluate_preference_adapter(tokenized.path, base, Path(trained["adapter_dir"]), cfg)
    return record_preference_variant(variant.name, variant.overrides, cfg, run_id, base, curated.split, pairs,
                                     trained, evaluation)


@flow(name="sweep", log_prints=True)
def sweep_flow(sweep: SweepConfig) -> SweepResult:
    """Curate once per distinct setting, train and evaluate every variant on one eval set, and compare them."""
    log = get_run_logger()
    variants = expand_variants(sweep)  # every variant validated before any work
    ref = _with_run_name(reference_config(sweep), f"{sweep.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    with mlflow_run(ref, "sweep") as parent:
        parent_id = parent.info.run_id
        mlflow.set_tags({"peftpipe.sweep": sweep.name, ROLE: "parent", "peftpipe.variants": str(len(variants))})
        mlflow.log_dict(sweep.model_dump(mode="json"), "sweep/sweep.json")
        log.info("sweep %s: %d variants", sweep.name, len(variants))

        curated = curate_distinct([ref] + [v.config for v in variants], sweep.name)
        reference = curated[curation_key(ref)].split
        _, shared = train_eval_counts(reference.ledger.extra)
        mlflow.log_metrics({"curations": float(len(curated)), "shared_eval_records": float(shared)})
        base = prepare_base_model_task(with_local_workdir(ref), reference)

        results: list[VariantResult] = []
        failed: list[str] = []
        for i, variant in enumerate(variants, 1):
            tags = {ROLE: "variant", "peftpipe.sweep": sweep.name, "peftpipe.variant": variant.name,
                    "peftpipe.curation": curation_key(variant.config)[:8]}
            with mlflow.start_run(run_name=f"{sweep.name}/{variant.name}", nested=True, tags=tags) as child:
                mlflow.log_params(tracking.flatten(variant.config.model_dump(mode="json")))
                log.info("variant %d/%d: %s", i, len(variants), variant.name)
                try:
                    result = run_variant(variant, curated[curation_key(variant.config)], reference, base, sweep,
                                         child.info.run_id)
                except Exception as exc:  # one broken variant must not lose the others' results
                    log.exception("variant %s failed", variant.name)
                    mlflow.set_tag("peftpipe.error", f"{type(exc).__name__}: {exc}"[:5000])
                    mlflow.end_run(status="FAILED")
                    failed.append(variant.name)
                    results.append(VariantResult(variant.name, variant.overrides, child.info.run_id, "", 0, 0,
                                                 method=variant.config.adapter.method))
                    continue
            results.append(result)
            log.info("  eval loss %.4f (base %.4f), task score %.4f, %d records kept",
                     result.metrics["adapter_eval_loss"], result.metrics["base_eval_loss"],
                     rank_value(result.metrics.get("task") or [], variant.config.evaluate.rank_metric),
                     result.records_kept)
            pause_point("sweep.variant-done", variant=variant.name)  # test only: between two variants

        out_dir = local_workdir(ref.workdir) / "sweeps" / f"{sweep.name}-{parent_id[:8]}"  # local, even for s3://
        rows = publish_comparison(results, out_dir, sweep.name, ref.evaluate.rank_metric)
        best_version = register_best(rows, failed, ref, sweep.name)
        url = tracking.run_url(parent, ref.tracking.tracking_uri)
        publish_link("sweep-mlflow-run", url, f"MLflow sweep run {parent_id}",
                     description="Parent run; its child runs are the variants (select them and press Compare)")
        if failed:
            mlflow.set_tag("peftpipe.failed_variants", ", ".join(failed)[:5000])
        log.info("comparison written to %s", out_dir)
    return SweepResult(parent_id, url, rows, out_dir, failed, best_version)


def register_best(rows: list[dict[str, Any]], failed: list[str], ref: PipelineConfig, sweep_name: str) -> str | None:
    """Register the best finished variant's adapter under the config's registered name with alias 'best'."""
    best = next((r for r in rows if r["variant"] not in failed and r.get("model_uri")), None)
    if best is None:
        return None
    name = ref.tracking.register_as or ref.name
    version = register_with_alias(best["model_uri"], name, BEST_ALIAS, tags={
        "sweep": sweep_name, "variant": best["variant"], "run_id": best["run_id"],
        "task_score": str(best.get("task_score")), "eval_loss": str(best["eval_loss"])})
    mlflow.set_tags({"peftpipe.best_model_version": f"{name}/{version}", "peftpipe.best_alias": BEST_ALIAS})
    return f"{name}/{version}"
