"""The curation flow: ingest -> exact dedup -> MinHash near-dedup -> quality filters -> train/eval split
(``train.objective: sft``), or -> preference pairs / KTO labels split by prompt (``dpo`` / ``kto``)."""
from __future__ import annotations

from dataclasses import dataclass, field

from prefect import flow, get_run_logger

from flows.tracked import mlflow_run
from schemas.pipeline import PipelineConfig
from tasks.core import storage
from tasks.core.errors import require_train_records
from tasks.core.stage import StageOutput
from tasks.dedup.report import report_publication as dedup_publication
from tasks.dedup.stage import exact_dedup_task, near_dedup_task
from tasks.filters import filter_publication, filter_task
from tasks.ingest.stage import ingest_task, log_lineage_to_mlflow
from tasks.preference.stage import preference_task
from tasks.preference.tracking import log_preference_dataset, log_preference_ledger
from tasks.split.stage import split_task
from tasks.track import runs as tracking
from tasks.track.artifacts import ledger_rows, publish_table


@dataclass(frozen=True)
class CurateResult:
    stages: list[StageOutput]
    digests: dict[str, str] = field(default_factory=dict)

    @property
    def split(self) -> StageOutput:
        return self.stages[-1]


@flow(name="curate", log_prints=True)
def curate_flow(cfg: PipelineConfig) -> CurateResult:
    """Turn the configured sources into a deduplicated, filtered train/eval split, with a ledger per stage."""
    storage.configure(cfg.storage)  # an s3:// workdir's endpoint and scratch, for this process and its workers
    log = get_run_logger()
    with mlflow_run(cfg, "curate"):
        ingested = ingest_task(cfg)
        exact = exact_dedup_task(ingested, cfg)
        near = near_dedup_task(exact, cfg)
        filtered = filter_task(near, cfg)
        preference = cfg.train.objective != "sft"
        split = preference_task(filtered, cfg) if preference else split_task(filtered, cfg)
        stages = [ingested, exact, near, filtered, split]

        for s in stages:
            led = s.ledger
            log.info("%-12s in=%-6d kept=%-6d dropped=%s", s.name, led.n_in, led.kept, dict(led.dropped))
            tracking.log_ledger(s)
        publish_table("curation-ledger", ledger_rows(stages), description=f"Curation funnel of config {cfg.name}")
        require_train_records(stages)  # every record dropped somewhere: one clear error with the counts
        log_lineage_to_mlflow(ingested)
        for dedup in (exact, near):
            tracking.publish(dedup_publication(dedup.path, dedup.name))
        tracking.publish(filter_publication(filtered))
        if preference:
            log_preference_ledger(split)
            digests = log_preference_dataset(split, cfg.name)
        else:
            digests = tracking.log_curated_dataset(split, cfg.name)
    return CurateResult(stages, digests)
