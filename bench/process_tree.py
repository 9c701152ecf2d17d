"""Memory of a benchmarked process and everything it started (pool workers, Ray's raylet and workers, servers):
the one RSS sum the benches sample for their "peak" columns.

    sys.path.insert(0, str(ROOT)); from bench.process_tree import tree_rss
"""
from __future__ import annotations


def tree_rss(proc) -> int:  # noqa: ANN001 - a psutil.Process
    """Summed RSS in bytes of ``proc`` and its descendants now; a process that exits meanwhile counts 0."""
    import psutil

    total = 0
    try:
        tree = [proc, *proc.children(recursive=True)]
    except psutil.Error:  # the root itself is gone
        return 0
    for p in tree:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total
