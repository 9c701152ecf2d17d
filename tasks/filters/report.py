"""The filter stage's report: a table of filter, reason, dropped and % of input, examples of rejects per
reason, agreement figures; written as report.json + report.md, published to Prefect and MLflow."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from schemas.filters import FilterConfig
from tasks.core.publication import Publication, metric_key

REPORT_JSON, REPORT_MD = "report.json", "report.md"


def snippet(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def build_report(cfg: FilterConfig, n_in: int, drops: Counter, stats: Counter,
                 examples: dict[tuple[str, str], list[dict[str, Any]]], agreement: dict, annotators: dict,
                 excluded: frozenset[str], order: list[str]) -> dict[str, Any]:
    """The report as JSON-able data; table rows follow the chain's order, then the reason's size."""
    rank = {name: i for i, name in enumerate(order)}
    rows = sorted(drops.items(), key=lambda kv: (rank.get(kv[0][0], len(rank)), -kv[1], kv[0][1]))
    table = [{"filter": f, "reason": r, "dropped": n, "pct_of_input": round(100.0 * n / n_in, 3) if n_in else 0.0}
             for (f, r), n in rows]
    total = sum(drops.values())
    return {
        "dry_run": cfg.dry_run,
        "in": n_in,
        "kept": n_in if cfg.dry_run else n_in - total,
        "dropped": 0 if cfg.dry_run else total,
        **({"would_drop": total} if cfg.dry_run else {}),
        "chain": [{"name": s.name, "params": s.params} for s in cfg.filters],
        "table": table,
        "examples": {f"{f} / {r}": ex for (f, r), ex in examples.items()},
        "stats": dict(sorted(stats.items())),
        "agreement": agreement,
        "annotators": annotators,
        "excluded_annotators": sorted(excluded),
    }


def _fmt(x: Any) -> str:
    if x is None:
        return "n/a"
    return f"{x:.4f}" if isinstance(x, float) else str(x)


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(report: dict[str, Any]) -> str:
    verb = "would drop" if report["dry_run"] else "dropped"
    lines = ["# Filter report" + (" (dry run: nothing was dropped)" if report["dry_run"] else ""), "",
             f"In: {report['in']}, kept: {report['kept']}, {verb}: {sum(r['dropped'] for r in report['table'])}", "",
             f"| filter | reason | {verb} | % of input |", "|---|---|---:|---:|"]
    lines += [f"| {r['filter']} | {r['reason']} | {r['dropped']} | {r['pct_of_input']:.2f} |" for r in report["table"]]
    if report["stats"]:
        lines += ["", "## Counts beside drops", "", "| what | n |", "|---|---:|"]
        lines += [f"| {k} | {v} |" for k, v in report["stats"].items()]
    if report["agreement"]:
        metrics = sorted({k for figures in report["agreement"].values() for k in figures})
        lines += ["", "## Agreement per source (Krippendorff's alpha over the input)", "",
                  "| source | " + " | ".join(metrics) + " |", "|---|" + "---:|" * len(metrics)]
        lines += [f"| {_cell(s)} | " + " | ".join(_fmt(f.get(m)) for m in metrics) + " |"
                  for s, f in report["agreement"].items()]
    unreliable = {a: s for a, s in report["annotators"].items() if s["unreliable"]}
    if report["annotators"]:
        lines += ["", f"## Annotators: {len(report['annotators'])} judged, {len(unreliable)} unreliable"
                  + (f", {len(report['excluded_annotators'])} left out of aggregation" if report["excluded_annotators"]
                     else "")]
        if unreliable:
            lines += ["", "| annotator | items | r vs others | mean abs diff |", "|---|---:|---:|---:|"]
            lines += [f"| {_cell(a)} | {s['items']} | {_fmt(s['correlation'])} | {_fmt(s['mean_abs_diff'])} |"
                      for a, s in list(unreliable.items())[:50]]
    if report["examples"]:
        lines += ["", "## Examples of rejects"]
        for key, exs in report["examples"].items():
            lines += ["", f"### {key}", "", "| id | detail | prompt | response |", "|---|---|---|---|"]
            lines += [f"| {_cell(e['id'])} | {_cell(e['detail'])} | {_cell(e['prompt'])} | {_cell(e['response'])} |"
                      for e in exs]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out: Path) -> None:
    (Path(out) / REPORT_JSON).write_text(json.dumps(report, indent=2, default=str) + "\n")
    (Path(out) / REPORT_MD).write_text(render_markdown(report))


def publish_prefect_artifacts(stage_path: Path) -> bool:
    """Publish the drop table (table artifact) and the full report (markdown) to the current Prefect run.

    Returns False, doing nothing, outside a flow or task run."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact
    from prefect.context import FlowRunContext, TaskRunContext
    if FlowRunContext.get() is None and TaskRunContext.get() is None:
        return False
    report = json.loads((Path(stage_path) / REPORT_JSON).read_text())
    rows = report["table"] or [{"filter": "-", "reason": "-", "dropped": 0, "pct_of_input": 0.0}]
    verb = "would drop" if report["dry_run"] else "dropped"
    create_table_artifact(table=rows, key="filter-drops",
                          description=f"Filter stage: in {report['in']}, kept {report['kept']} ({verb} per reason)")
    create_markdown_artifact(markdown=(Path(stage_path) / REPORT_MD).read_text(), key="filter-report",
                             description="Filter report: drops, examples of rejects, agreement")
    return True


def agreement_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The report's own metrics: agreement per source and unreliable annotators, and, in a dry run, what the
    filters would drop. The stage's counts (``filter.in``, ``filter.kept``, ``filter.dropped.<reason>``) come
    from its ledger, logged like every stage's, so they are not repeated here."""
    metrics: dict[str, float] = {}
    for source, figures in report["agreement"].items():
        for key, value in figures.items():
            if value is not None:
                metrics[metric_key("filter", "agreement", source, key)] = float(value)
    if report["dry_run"]:
        by_reason: Counter = Counter()
        for row in report["table"]:
            by_reason[row["reason"]] += row["dropped"]
        for reason, n in by_reason.items():
            metrics[metric_key("filter", "would_drop", reason)] = float(n)
    metrics[metric_key("filter", "unreliable_annotators")] = float(
        sum(s["unreliable"] for s in report["annotators"].values()))
    return metrics


def report_publication(stage_path: Path) -> Publication:
    """Agreement metrics, the drop table and the report files, for ``tasks.track.runs.publish``."""
    path = Path(stage_path)
    report = json.loads((path / REPORT_JSON).read_text())
    pub = Publication(agreement_metrics(report), [(path / REPORT_MD, "filters"), (path / REPORT_JSON, "filters")])
    if report["table"]:
        columns = {k: [r[k] for r in report["table"]] for k in ("filter", "reason", "dropped", "pct_of_input")}
        pub.tables.append((columns, "filters/drops.json"))
    return pub
