"""What a stage wants shown on the tracking server, as plain data: metrics, files and tables.

Stages describe their reports with a ``Publication``; ``tasks.track.runs.publish`` is the one place that sends
it to MLflow. Metric names follow one scheme everywhere: dotted parts, ``<stage>.<what>[.<detail>]``
(``filter.dropped.low_rating``, ``filter.agreement.<source>.alpha_interval``), made safe by ``metric_key``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. /]")


def metric_key(*parts: str) -> str:
    """An MLflow-safe metric name: reasons such as 'flagged:toxic' become 'flagged_toxic'."""
    return _UNSAFE.sub("_", ".".join(parts))


@dataclass
class Publication:
    """Metrics, files (path, artifact folder) and tables (columns, artifact file) of one stage's report."""

    metrics: dict[str, float] = field(default_factory=dict)
    files: list[tuple[Path, str]] = field(default_factory=list)
    tables: list[tuple[dict[str, list[Any]], str]] = field(default_factory=list)
