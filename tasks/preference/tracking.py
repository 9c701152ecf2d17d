"""MLflow lineage of the preference data: the pairs (or KTO examples) as ``mlflow.data`` inputs with content
digests, and the prompt / candidate-pair balances of the stage's ledger as metrics."""
from __future__ import annotations

import hashlib
import json
import warnings

import mlflow

from tasks.core.stage import StageOutput, iter_batches, read_table
from tasks.track.runs import metric_key

_CONTENT = {"pair_id": ("pair_id", "prompt", "chosen", "rejected"),
            "example_id": ("example_id", "prompt", "completion", "label")}


def preference_digest(directory) -> str:
    """Digest of a pair (or example) split's ids and texts, independent of how it is sharded."""
    h = hashlib.sha256()
    for batch in iter_batches(directory):
        cols = _CONTENT["pair_id" if "pair_id" in batch.schema.names else "example_id"]
        for row in zip(*(batch.column(c).to_pylist() for c in cols)):
            h.update(json.dumps(row, sort_keys=True).encode())
    return h.hexdigest()[:32]


def log_preference_dataset(stage: StageOutput, name: str, preview_rows: int = 1000) -> dict[str, str]:
    """Log the train and eval pairs as dataset inputs (contexts ``training`` / ``evaluation``); returns digests."""
    digests = {}
    for part, context in (("train", "training"), ("eval", "evaluation")):
        directory = stage.data(part)
        digests[part] = preference_digest(directory)
        preview = read_table(directory).slice(0, preview_rows).to_pandas()
        for col in ("prompt", "chosen", "rejected", "completion"):
            if col in preview:
                preview[col] = preview[col].map(lambda m: json.dumps(list(m)))
        with warnings.catch_warnings():  # a local path matches two equivalent source resolvers
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_pandas(preview, source=str(directory.resolve()),
                                              name=f"{name}-preference-{part}", digest=digests[part])
        mlflow.log_input(dataset, context=context)
    return digests


def log_preference_ledger(stage: StageOutput) -> None:
    """``preference.prompts.*`` and ``preference.candidate_pairs.*`` (the nested balances of the ledger)."""
    extra = stage.ledger.extra
    metrics = {}
    for section in ("prompts", "candidate_pairs"):
        block = extra.get(section)
        if not block:
            continue
        metrics[metric_key(stage.name, section, "in")] = block["in"]
        metrics[metric_key(stage.name, section, "kept")] = block["kept"]
        for reason, n in block["dropped"].items():
            metrics[metric_key(stage.name, section, "dropped", reason)] = n
    if metrics:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
