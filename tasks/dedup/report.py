"""The dedup report: cluster count, a size histogram (PNG), the largest clusters with example texts.

Written beside the stage output (report.md, cluster_sizes.png, report.json), then published as Prefect
artifacts (inside a flow or task run only) and as MLflow artifacts (inside an active MLflow run only).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from tasks.core.publication import Publication
from tasks.dedup.lsh import Plan, Unit, read_unit, unit_texts
from tasks.dedup.minhash import band_recall_table

REPORT_MD, REPORT_PNG, REPORT_JSON = "report.md", "cluster_sizes.png", "report.json"
EXAMPLE_CHARS = 200

def plot_sizes(sizes: dict[int, int], path: Path, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # not pyplot: no global state, no GUI backend, a faster import

    fig = Figure(figsize=(6, 3.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if sizes:
        xs = sorted(sizes)
        ax.bar([str(x) for x in xs], [sizes[x] for x in xs])
        ax.set_yscale("log")
    else:
        ax.text(0.5, 0.5, "no duplicate clusters", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("cluster size (records)")
    ax.set_ylabel("clusters")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)

def largest_clusters(dec: pa.Table, units: list[Unit], plan: Plan, top: int) -> list[dict[str, Any]]:
    """The ``top`` largest clusters with up to three example texts each (the kept one first)."""
    if dec.num_rows == 0 or top == 0:
        return []
    kept = dec.filter(pc.invert(dec.column("is_duplicate")))
    kept = kept.sort_by([("cluster_size", "descending"), ("cluster_id", "ascending")]).slice(0, top)
    wanted = set(kept.column("cluster_id").to_pylist())
    members = dec.filter(pc.is_in(dec.column("cluster_id"), pa.array(list(wanted), pa.string())))
    members = members.sort_by([("cluster_id", "ascending"), ("is_duplicate", "ascending"), ("idx", "ascending")])
    examples: dict[str, list[int]] = {}
    for cid, idx in zip(members.column("cluster_id").to_pylist(), members.column("idx").to_pylist(), strict=True):
        if len(examples.setdefault(cid, [])) < 3:
            examples[cid].append(idx)
    need = sorted(i for v in examples.values() for i in v)
    text_of: dict[int, str] = {}
    for unit in units:
        local = [i - unit.start for i in need if unit.start <= i < unit.start + unit.rows]
        if local:
            texts = unit_texts(read_unit(unit).take(pa.array(local)), plan).to_pylist()
            text_of.update({unit.start + i: t for i, t in zip(local, texts, strict=True)})
    return [{"cluster_id": cid, "size": size, "examples": [text_of.get(i, "")[:EXAMPLE_CHARS]
                                                           for i in examples.get(cid, [])]}
            for cid, size in zip(kept.column("cluster_id").to_pylist(), kept.column("cluster_size").to_pylist(),
                                 strict=True)]

def write_report(out: Path, dec: pa.Table, units: list[Unit], plan: Plan, stats: dict[str, Any],
                 kind: str) -> dict[str, Any]:
    """Write report.md, cluster_sizes.png and report.json into ``out``; return the JSON summary."""
    sizes = stats.get("cluster_sizes", {})
    top = largest_clusters(dec, units, plan, plan.cfg.report_clusters)
    plot_sizes(sizes, out / REPORT_PNG, f"{kind} dedup: clusters of 2+ records")
    n_in, dropped = stats.get("in_rows", 0), stats.get("dropped", 0)
    lines = [f"# {kind.capitalize()} dedup report", "",
             f"- records in: {n_in}, kept: {n_in - dropped}, removed as duplicates: {dropped}",
             f"- duplicate clusters (2+ records): {stats.get('clusters', 0)}; every other record is alone in "
             "its own cluster", f"- keep rule: {plan.cfg.keep} (ties broken by id)"]
    if kind == "near":
        lines += [f"- compared text: {plan.cfg.text}; {plan.cfg.shingle} {plan.cfg.ngram}-grams; "
                  f"threshold {plan.cfg.threshold}; verify: {plan.cfg.verify}",
                  f"- LSH: {plan.bands} bands x {plan.rows} rows; candidate probability by Jaccard: "
                  f"{band_recall_table(plan.cfg.threshold, plan.bands, plan.rows)}",
                  f"- candidate pairs: {stats.get('candidate_pairs', 0)}, verified edges: {stats.get('edges', 0)}"]
    lines += ["", "## Cluster sizes", "", "| size | clusters |", "|---|---|"]
    lines += [f"| {s} | {c} |" for s, c in sorted(sizes.items())]
    lines += ["", f"![cluster sizes]({REPORT_PNG})", "", "## Largest clusters", ""]
    for c in top:
        lines.append(f"### {c['cluster_id']} ({c['size']} records)")
        lines += [f"- {'kept' if i == 0 else 'dup'}: " + e.replace("\n", " ") for i, e in enumerate(c["examples"])]
        lines.append("")
    (out / REPORT_MD).write_text("\n".join(lines) + "\n")
    summary = {"clusters": stats.get("clusters", 0), "cluster_sizes": {str(k): v for k, v in sizes.items()},
               "largest": top}
    (out / REPORT_JSON).write_text(json.dumps(summary, indent=2) + "\n")
    return {"clusters": summary["clusters"], "largest_size": max(sizes) if sizes else 1}

def publish_artifacts(path: Path, stage: str) -> None:
    """Publish the report as Prefect artifacts, where a flow or task run is active."""
    path = Path(path)
    if not (path / REPORT_MD).exists():
        return
    from prefect.context import FlowRunContext, TaskRunContext

    if FlowRunContext.get() or TaskRunContext.get():
        from prefect.artifacts import create_markdown_artifact, create_table_artifact

        summary = json.loads((path / REPORT_JSON).read_text())
        key = stage.replace("_", "-")
        create_markdown_artifact((path / REPORT_MD).read_text(), key=f"{key}-report",
                                 description=f"{stage}: clusters and examples")
        rows = [{"size": int(s), "clusters": c} for s, c in summary["cluster_sizes"].items()]
        create_table_artifact(rows or [{"size": 1, "clusters": 0}], key=f"{key}-cluster-sizes",
                              description=f"{stage}: histogram of cluster sizes")


def report_publication(path: Path, stage: str) -> Publication:
    """The report's files (and the dedup map, where one was written) for ``tasks.track.runs.publish``."""
    return Publication(files=[(Path(path) / name, stage) for name in (REPORT_MD, REPORT_PNG, REPORT_JSON,
                                                                       "dedup_map.parquet")])
