"""What makes a sweep's variants comparable, and the comparison itself.

* ``shared_eval_split``: a variant's training records beside the one eval set every variant is measured on.
* ``comparison_rows`` / ``plot_loss_vs_records`` / ``publish_comparison``: the result table, ranked by task score
  (``evaluate.rank_metric`` of the adapters' answers on the first eval set) where the variants have one and by
  eval loss otherwise, and the plot of that score against records kept, as Prefect artifacts and as MLflow
  artifacts of the sweep's parent run.
"""
from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from prefect import task

from schemas.record import RECORD_SCHEMA, REJECT_SCHEMA
from schemas.sweep import SweepConfig
from tasks.core.stage import (
    Ledger,
    ShardWriter,
    StageOutput,
    code_version,
    digest,
    iter_batches,
    run_stage,
    with_reject_columns,
)
from tasks.evaluate.leakcheck import overlap_shares, record_texts
from tasks.filters.decontam import ngram_hashes
from tasks.track.artifacts import artifact_key, in_run, publish_markdown, publish_table

STAGE = "shared_eval_split"


def eval_index(eval_dir: Path, ngram: int, writer: ShardWriter | None = None) -> tuple[set[str], np.ndarray]:
    """Ids and sorted unique word n-gram hashes of the shared eval set; copies its records to ``writer``."""
    ids: set[str] = set()
    grams: list[np.ndarray] = []
    for batch in iter_batches(eval_dir):
        table = pa.Table.from_batches([batch])
        ids.update(table["id"].to_pylist())
        grams.append(ngram_hashes(record_texts(table), ngram)[0])
        if writer is not None:
            writer.write(table)
    return ids, np.unique(np.concatenate(grams)) if grams else np.empty(0, np.uint64)


def shared_eval_split(variant_split: Path, eval_dir: Path, ngram: int, max_overlap: float, out: Path) -> Ledger:
    """Write ``out/train`` (the variant's train records) and ``out/eval`` (the shared eval set's records).

    A train record is held out, with its reason, when its id is in the eval set (a different split setting) or
    when more than ``max_overlap`` of its word n-grams occur in the eval set: a near-duplicate of an eval record
    that a looser curation kept would otherwise reward that curation with a leak. The variant's own eval records
    are replaced by the shared set; they are kept in ``rejects`` so every input record is accounted for.
    """
    variant_split, out = Path(variant_split), Path(out)
    ledger = Ledger(STAGE)
    with ShardWriter(out / "eval", RECORD_SCHEMA) as ev, ShardWriter(out / "train", RECORD_SCHEMA) as train, \
            ShardWriter(out / "rejects", REJECT_SCHEMA) as rejects:
        ids, index = eval_index(Path(eval_dir), ngram, ev)
        for batch in iter_batches(variant_split / "train"):
            table = pa.Table.from_batches([batch])
            hits, totals = overlap_shares(record_texts(table), index, ngram)
            share = np.divide(hits, totals, out=np.zeros(len(hits)), where=totals > 0)
            in_eval = np.array([i in ids for i in table["id"].to_pylist()], dtype=bool)
            leak = ~in_eval & (share > max_overlap)
            drop = in_eval | leak
            if drop.any():
                idx = np.flatnonzero(drop)
                reasons = ["in_shared_eval" if in_eval[i] else "overlaps_shared_eval" for i in idx]
                details = [None if in_eval[i] else f"{ngram}-gram overlap={hits[i]}/{totals[i]} "
                                                    f"({share[i]:.3g}>{max_overlap})" for i in idx]
                rejects.write(with_reject_columns(table.take(pa.array(idx)), STAGE, reasons, details))
                for reason in reasons:
                    ledger.drop(reason)
            train.write(table.filter(pa.array(~drop)))
            ledger.n_in += table.num_rows
        for batch in iter_batches(variant_split / "eval"):
            table = pa.Table.from_batches([batch])
            why = "held out by this variant's split; every variant is measured on the shared eval set"
            rejects.write(with_reject_columns(table, STAGE, "variant_eval_replaced", [why] * table.num_rows))
            ledger.drop("variant_eval_replaced", table.num_rows)
            ledger.n_in += table.num_rows
        ledger.n_in += ev.rows
        ledger.kept = train.rows + ev.rows
        ledger.extra = {"train": train.rows, "eval": ev.rows, "eval_source": str(eval_dir)}
    return ledger


@task(name="shared-eval-split")
def shared_eval_split_task(variant: StageOutput, reference: StageOutput, sweep: SweepConfig, workdir: str
                           ) -> StageOutput:
    """Prefect wrapper: the variant's split stage beside the reference split's eval set, content-addressed."""
    code = code_version("tasks.sweep.compare", "tasks.evaluate.leakcheck", "tasks.core.stage")
    key = digest(STAGE, code, sweep.eval_overlap_ngram, sweep.eval_overlap_max, variant.key,
                 reference.key)
    return run_stage(workdir, STAGE, key, lambda tmp: shared_eval_split(
        variant.path, reference.data("eval"), sweep.eval_overlap_ngram, sweep.eval_overlap_max, tmp))


# --- the comparison

@dataclass
class VariantResult:
    """What one variant of a sweep produced; the flow fills it, the comparison reads it."""

    name: str
    overrides: dict[str, Any]
    run_id: str
    curation: str  # short key of its curation setting: variants with the same one shared the curated data
    records_kept: int  # records the variant's curation kept (train + its own eval split)
    train_records: int  # records it trained on, after the leak check against the shared eval set
    metrics: dict[str, Any] = field(default_factory=dict)
    samples: list[dict[str, str]] = field(default_factory=list)
    method: str = "lora"  # QLoRA's base is NF4-quantized, so its base_eval_loss differs a little from LoRA's
    model_uri: str | None = None  # the variant's adapter as a logged MLflow model (the best one is registered)


COLUMNS = ("rank", "variant", "method", "records_kept", "train_records", "curation", "task_score", "base_task_score",
           "eval_loss", "perplexity", "base_eval_loss", "eval_loss_delta", "train_loss", "steps")
FAMILY = "family:"  # prefix of the per-family task score columns


def _num(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


def _task_scores(task: list[dict] | None, model: str, metric: str) -> dict[str, float]:
    """``metric`` of ``model`` on the first scored eval set: {"": overall, family: ...}."""
    for res in task or []:
        groups = res.get(model) or {}
        if "" in groups:
            return {g: _num(row.get(metric)) for g, row in groups.items()}
    return {}


def ranks_by_task(rows: list[dict[str, Any]]) -> bool:
    """Whether the rows are ranked by task score: any variant has one."""
    return any(math.isfinite(r.get("task_score", math.nan)) for r in rows)


def comparison_rows(results: list[VariantResult], rank_metric: str = "normalized_exact_match"
                    ) -> list[dict[str, Any]]:
    """One row per variant, best first: highest task score (``rank_metric``, overall, on the first eval set;
    ties by lower eval loss) when any variant has one, else lowest eval loss; a failed variant sorts last.
    Each family's score is a ``family:<name>`` column."""
    rows = []
    for r in results:
        m = r.metrics
        adapter = _task_scores(m.get("task"), "adapter", rank_metric)
        base = _task_scores(m.get("task"), "base", rank_metric)
        rows.append({"variant": r.name, "method": r.method, "records_kept": r.records_kept, "train_records": r.train_records,
                     "curation": r.curation, "task_metric": rank_metric, "task_score": adapter.get("", math.nan),
                     "base_task_score": base.get("", math.nan), "eval_loss": _num(m.get("adapter_eval_loss")),
                     "perplexity": _num(m.get("adapter_perplexity")), "base_eval_loss": _num(m.get("base_eval_loss")),
                     "eval_loss_delta": _num(m.get("eval_loss_delta")), "train_loss": _num(m.get("train_loss")),
                     "steps": int(_num(m.get("steps"))) if math.isfinite(_num(m.get("steps"))) else 0,
                     **{f"{FAMILY}{g}": v for g, v in sorted(adapter.items()) if g},
                     "overrides": json.dumps(r.overrides, sort_keys=True), "run_id": r.run_id,
                     "model_uri": r.model_uri})
    if ranks_by_task(rows):
        rows.sort(key=lambda row: (not math.isfinite(row["task_score"]), -row["task_score"] if
                                   math.isfinite(row["task_score"]) else 0.0, _loss_key(row), row["variant"]))
    else:
        rows.sort(key=lambda row: (not math.isfinite(row["eval_loss"]), _loss_key(row), row["variant"]))
    for i, row in enumerate(rows, 1):
        row["rank"] = i
    return [{"rank": row.pop("rank"), **row} for row in rows]


def _loss_key(row: dict[str, Any]) -> float:
    return row["eval_loss"] if math.isfinite(row["eval_loss"]) else math.inf


def score_key(rows: list[dict[str, Any]]) -> tuple[str, str, str]:
    """(column, axis label, base column) of what the rows are ranked by."""
    if ranks_by_task(rows):
        return "task_score", f"task score ({rows[0]['task_metric']})", "base_task_score"
    return "eval_loss", "eval loss", "base_eval_loss"


def table_columns(rows: list[dict[str, Any]]) -> tuple[str, ...]:
    """COLUMNS plus the per-family score columns present."""
    families = list(dict.fromkeys(k for r in rows for k in r if k.startswith(FAMILY)))
    at = COLUMNS.index("base_task_score") + 1
    return COLUMNS[:at] + tuple(families) + COLUMNS[at:]


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) else "n/a"
    return str(value).replace("|", "\\|")


def markdown_table(rows: list[dict[str, Any]], columns: tuple[str, ...] = COLUMNS) -> str:
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    return head + "".join("| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |\n" for row in rows)


def generation_rows(results: list[VariantResult]) -> list[dict[str, str]]:
    """Long table of generations: the same eval prompts, the base model's answer and each variant's."""
    rows = []
    for r in results:
        for i, s in enumerate(r.samples):
            rows.append({"prompt_index": i, "prompt": s.get("prompt", ""), "variant": r.name,
                         "adapter": s.get("adapter", ""), "base": s.get("base", "")})
    return rows


def plot_loss_vs_records(rows: list[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Scatter of what the rows are ranked by (task score, else eval loss) against records kept, one labelled
    point per variant, the base model as a line."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a worker
    import matplotlib.pyplot as plt

    key, label_y, base_key = score_key(rows) if rows else ("eval_loss", "eval loss", "base_eval_loss")
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    points = [r for r in rows if math.isfinite(r[key])]
    ax.scatter([r["records_kept"] for r in points], [r[key] for r in points], s=40, zorder=3)
    for i, r in enumerate(points):  # labels alternate above and below, so near points stay readable
        ax.annotate(f"{r['rank']}. {r['variant']}", (r["records_kept"], r[key]), textcoords="offset points",
                    xytext=(5, 4 if i % 2 == 0 else -10), fontsize=7)
    bases = {r["method"]: r[base_key] for r in reversed(rows) if math.isfinite(r[base_key])}
    for (method, loss), style in zip(sorted(bases.items()), ("--", ":")):
        label = "base model" + (" in NF4 (QLoRA)" if method == "qlora" else "")
        ax.axhline(loss, color="grey", linestyle=style, linewidth=1, label=f"{label} ({loss:.3f})")
    if bases:
        ax.legend(loc="best", fontsize=8)
    ax.set_xlabel("records kept by curation")
    ax.set_ylabel(f"{label_y} on the shared eval set")
    ax.set_title(title or f"{label_y} vs records kept", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def text_plot(rows: list[dict[str, Any]], width: int = 56, height: int = 12) -> str:
    """The same scatter in characters (renders anywhere markdown does): point k is the variant ranked k."""
    key = score_key(rows)[0] if rows else "eval_loss"
    points = [r for r in rows if math.isfinite(r[key])]
    if not points:
        return "(no finished variant)"
    xs, ys = [r["records_kept"] for r in points], [r[key] for r in points]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    grid = [[" "] * width for _ in range(height)]
    for r, x, y in zip(points, xs, ys):
        col = 0 if x1 == x0 else round((x - x0) / (x1 - x0) * (width - 1))
        # the best variant at the bottom: a loss grows upwards, a task score downwards
        frac = 0.0 if y1 == y0 else ((y1 - y) / (y1 - y0) if key == "eval_loss" else (y - y0) / (y1 - y0))
        line = round(frac * (height - 1))
        mark = str(r["rank"]) if r["rank"] < 10 else "*"
        grid[line][col] = mark if grid[line][col] == " " else "+"
    top, bottom = (y1, y0) if key == "eval_loss" else (y0, y1)
    lines = [f"{top:8.4f} |" + "".join(grid[0])] + ["         |" + "".join(g) for g in grid[1:-1]]
    lines += [f"{bottom:8.4f} |" + "".join(grid[-1]), "         +" + "-" * width,
              f"          {x0:<{width // 2}}{x1:>{width - width // 2}}", "          records kept ->"]
    return "\n".join(lines)


def comparison_markdown(rows: list[dict[str, Any]], sweep_name: str) -> str:
    key, label, base_key = score_key(rows) if rows else ("eval_loss", "eval loss", "base_eval_loss")
    best = rows[0] if rows and math.isfinite(rows[0][key]) else None
    head = f"# Sweep `{sweep_name}`: {len(rows)} variants\n\n"
    if best:
        head += (f"Best: **{best['variant']}**, {label} {best[key]:.4f} (base model "
                 f"{best[base_key]:.4f}), eval loss {best['eval_loss']:.4f}, with {best['records_kept']} records "
                 f"kept.\n\n")
    legend = "\n".join(f"{r['rank']}. {r['variant']}" for r in rows)
    return (head + markdown_table(rows, table_columns(rows)) + f"\n## {label[0].upper() + label[1:]} vs records "
            f"kept\n\n```\n" + text_plot(rows) + "\n```\n\n"
            + legend + "\n\nEvery variant is measured on the same eval set, with the same base model and "
                       "tokenizer: base_eval_loss is equal across rows of one method (QLoRA's base is the "
                       "same model quantized to NF4, so its base loss differs slightly).\n")


def publish_comparison(results: list[VariantResult], out_dir: Path, sweep_name: str,
                       rank_metric: str = "normalized_exact_match") -> list[dict[str, Any]]:
    """Write comparison.{json,md,png} and generations.json to ``out_dir``; publish them as Prefect artifacts
    and, when an MLflow run is active (the sweep's parent), as its artifacts, metrics and tags."""
    import mlflow

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = comparison_rows(results, rank_metric)
    gens = generation_rows(results)
    md = comparison_markdown(rows, sweep_name)
    (out_dir / "comparison.json").write_text(json.dumps(rows, indent=1) + "\n")
    (out_dir / "comparison.md").write_text(md)
    (out_dir / "generations.json").write_text(json.dumps(gens, indent=1) + "\n")
    png = plot_loss_vs_records(rows, out_dir / "eval_loss_vs_records.png", f"sweep {sweep_name}")

    publish_table(f"{sweep_name}-comparison", rows, description=f"Variants of sweep {sweep_name}, best first")
    publish_markdown(f"{sweep_name}-summary", md, description="Comparison table and eval loss vs records kept")
    if gens:
        publish_table(f"{sweep_name}-generations", gens, description="Same eval prompts, base vs each variant")
    if in_run():
        from prefect.artifacts import create_image_artifact

        data_url = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()
        create_image_artifact(data_url, key=artifact_key(f"{sweep_name}-plot"),
                              description="Eval loss vs records kept, per variant")

    if mlflow.active_run() is not None:
        mlflow.log_table(_columns(rows), artifact_file="sweep/comparison.json")
        if gens:
            mlflow.log_table(_columns(gens), artifact_file="sweep/generations.json")
        mlflow.log_artifact(str(png), artifact_path="sweep")
        mlflow.log_artifact(str(out_dir / "comparison.md"), artifact_path="sweep")
        mlflow.set_tag("mlflow.note.content", md[:60_000])  # the run page's description shows the table
        key = score_key(rows)[0] if rows else "eval_loss"
        finite = [r for r in rows if math.isfinite(r[key])]
        if finite:
            best = {"best_eval_loss": finite[0]["eval_loss"], "base_eval_loss": finite[0]["base_eval_loss"],
                    "best_task_score": finite[0]["task_score"], "base_task_score": finite[0]["base_task_score"]}
            mlflow.log_metrics({k: v for k, v in best.items() if math.isfinite(v)})
            mlflow.set_tags({"peftpipe.best_variant": finite[0]["variant"],
                             "peftpipe.best_run_id": finite[0]["run_id"]})
    return rows


def _columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return {k: [r.get(k) for r in rows] for k in keys}
