"""The layout the README promises: one package per stage, no import circles, no upward imports.

The import graph is read from the source with ``ast`` (every ``import`` statement, also those inside functions:
a lazy import is still a dependency), so the test needs nothing imported and fails on the first new circle.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TASKS = ROOT / "tasks"

# Lower layers never import higher ones; packages of one layer may import each other only where listed.
LAYERS = {"core": 1, "track": 2, "ingest": 3, "dedup": 3, "filters": 3, "split": 3, "tokenize": 3,
          "preference": 4, "train": 4, "evaluate": 5, "sweep": 6}
SAME_LAYER_ALLOWED: set[tuple[str, str]] = set()


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Every ``tasks.*`` module that ``path`` imports. ``from tasks.dedup import lsh`` names the module
    ``tasks.dedup.lsh``; ``from tasks.dedup.lsh import f`` names ``tasks.dedup.lsh`` (f is no module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
    return {n for n in found if n in modules}


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in TASKS.rglob("*.py")}
    return {name: imports_of(path, set(modules)) - {name} for name, path in modules.items()}


def stage_package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_package_is_in_a_layer_and_documents_itself():
    for pkg in sorted(p for p in TASKS.iterdir() if p.is_dir() and (p / "__init__.py").exists()):
        assert pkg.name in LAYERS, f"tasks/{pkg.name}/ is in no layer of tests/test_layout.py"
        doc = ast.get_docstring(ast.parse((pkg / "__init__.py").read_text()))
        assert doc, f"tasks/{pkg.name}/__init__.py has no docstring saying what the package owns"
    assert not [p.name for p in TASKS.glob("*.py") if p.name != "__init__.py"], "tasks/ holds packages only"


def test_no_import_circles():
    edges = graph()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])


def test_no_upward_imports():
    bad = []
    for src, targets in graph().items():
        a = stage_package(src)
        for dst in targets:
            b = stage_package(dst)
            if a is None or b is None or a == b:
                continue
            if LAYERS[b] > LAYERS[a] or (LAYERS[b] == LAYERS[a] and (a, b) not in SAME_LAYER_ALLOWED):
                bad.append(f"{src} -> {dst}")
    assert not bad, "imports against the layering:\n" + "\n".join(sorted(bad))


def test_the_graph_sees_a_circle():
    """The control: the detector must find a circle that exists (guards against a graph that is always empty)."""
    edges = graph()
    assert edges["tasks.filters.chain"], "the filter chain imports the filter modules; the graph lost that edge"
