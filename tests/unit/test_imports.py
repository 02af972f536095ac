"""No import cycles in watchdog/: every import counts, also those inside functions and
under TYPE_CHECKING, since each one says which module depends on which."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "watchdog"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The watchdog modules `path` imports, anywhere in the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from watchdog.lab import cluster` imports the submodule watchdog.lab.cluster
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules
                     else node.module for a in node.names]
        else:
            continue
        found.update(n for n in names if n in modules)
    return found


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    graph = {name: imports_of(path, modules) for name, path in files.items()}
    for name in graph:  # a package's __init__ is not a dependency worth a cycle
        graph[name] -= {name.rpartition(".")[0]} if "." in name else set()
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_walker_sees_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_walker_reads_every_kind_of_import(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "from typing import TYPE_CHECKING\nimport watchdog.a\nfrom watchdog.pkg import sub\n"
        "if TYPE_CHECKING:\n    from watchdog.b import X\n"
        "def f():\n    from watchdog.c import Y\n")
    modules = {"watchdog.a", "watchdog.b", "watchdog.c", "watchdog.pkg", "watchdog.pkg.sub"}
    assert imports_of(source, modules) == {"watchdog.a", "watchdog.b", "watchdog.c",
                                           "watchdog.pkg.sub"}


def test_watchdog_has_no_import_cycle() -> None:
    graph = import_graph()
    assert graph.get("watchdog.daemon"), "the walker found nothing"
    assert cycles(graph) == []


def test_jobs_and_web_stay_below_the_daemon() -> None:
    graph = import_graph()
    for module in ("watchdog.web", "watchdog.gateway.jobs", "watchdog.etcd.job",
                   "watchdog.reducer", "watchdog.snapshot", "watchdog.metrics"):
        assert "watchdog.daemon" not in graph[module], module
    for job in ("watchdog.gateway.jobs", "watchdog.etcd.job"):
        assert not graph[job] & {"watchdog.metrics", "watchdog.snapshot", "watchdog.reducer",
                                 "watchdog.tripwire"}, job
