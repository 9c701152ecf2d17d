"""Prefect artifacts that show in the UI; each is a no-op when called outside a flow or task run."""
from __future__ import annotations

from typing import Any

from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.context import FlowRunContext, TaskRunContext

from tasks.core.stage import StageOutput


def in_run() -> bool:
    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def artifact_key(text: str) -> str:
    """Prefect keys allow lowercase letters, digits and dashes only."""
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


def publish_table(key: str, rows: list[dict[str, Any]], description: str = "") -> None:
    if in_run() and rows:
        create_table_artifact(rows, key=artifact_key(key), description=description)


def publish_markdown(key: str, markdown: str, description: str = "") -> None:
    if in_run():
        create_markdown_artifact(markdown, key=artifact_key(key), description=description)


def publish_link(key: str, link: str, text: str, description: str = "") -> None:
    if in_run():
        create_link_artifact(link, link_text=text, key=artifact_key(key), description=description)


def ledger_rows(stages: list[StageOutput]) -> list[dict[str, Any]]:
    """One row per (stage, outcome) so the whole curation funnel reads as one table."""
    rows = []
    for s in stages:
        led = s.ledger
        rows.append({"stage": s.name, "outcome": "in", "records": led.n_in})
        rows.append({"stage": s.name, "outcome": "kept", "records": led.kept})
        for reason, n in sorted(led.dropped.items()):
            rows.append({"stage": s.name, "outcome": f"dropped: {reason}", "records": n})
    return rows
