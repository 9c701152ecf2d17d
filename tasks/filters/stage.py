"""The Prefect face of the filter stage: a thin @task over apply_filters, and the MLflow report hook."""
from __future__ import annotations

from prefect import task

from schemas.pipeline import PipelineConfig
from tasks.core.publication import Publication
from tasks.core.shards import stage_mapper
from tasks.core.stage import StageOutput, code_version, digest, run_stage
from tasks.filters.apply import STAGE, apply_filters
from tasks.filters.decontam import eval_sets_fingerprint
from tasks.filters.report import publish_prefect_artifacts, report_publication


def filter_key(upstream_key: str, cfg: PipelineConfig) -> str:
    """The stage's cache key; eval files for decontamination add their size and mtime, so editing one reruns."""
    evals = [eval_sets_fingerprint(s.parsed()) for s in cfg.filters.filters if s.name == "decontaminate"]
    return digest(STAGE, code_version("tasks.filters", "tasks.core.stage"), cfg.filters.cache_settings(), upstream_key, *([evals] if evals else []))


@task(name="filter")
def filter_task(upstream: StageOutput, cfg: PipelineConfig) -> StageOutput:
    """Run (or reuse) the filter stage over the upstream shards and publish its report as Prefect artifacts."""
    out = run_stage(cfg.workdir, STAGE, filter_key(upstream.key, cfg),
                    lambda tmp: apply_filters(upstream.data(), cfg.filters, tmp, stage_mapper(cfg.runner, STAGE)))
    publish_prefect_artifacts(out.path)
    return out


def filter_publication(stage: StageOutput) -> Publication:
    """The filter stage's report for MLflow: agreement metrics, the drop table, the report files."""
    return report_publication(stage.path)
