"""The layout's rules hold: packages by role, lower layers never import higher ones, no import cycle.

The layers and the two "never imports" rules are import-linter contracts in
pyproject.toml; this test runs them and, beside them, looks for import cycles
between modules (import-linter's layers allow a cycle inside one layer).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[2]


def test_import_contracts_are_kept() -> None:
    lint = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout, done.stdout


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each a cycle or several."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for other in sorted(graph.find_modules_directly_imported_by(module)):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in on_stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def test_no_module_imports_itself_through_others() -> None:
    graph = grimp.build_graph("broker", "adapters")
    # A package's __init__ re-exporting its modules is no cycle of meaning: each module of
    # broker.kafka imports its siblings, never the package.
    for package in ("broker.kafka", "adapters.runtime"):
        for child in graph.find_children(package):
            if graph.direct_import_exists(importer=child, imported=package):
                raise AssertionError(f"{child} imports its own package {package}")
    graph.remove_module("broker.kafka")
    graph.remove_module("adapters.runtime")
    assert _cycles(graph) == []


def test_cycle_finder_finds_a_cycle() -> None:
    """The check above can fail: a graph with a cycle is reported."""
    graph = grimp.ImportGraph()
    for name in ("a", "a.x", "a.y", "a.z"):
        graph.add_module(name)
    graph.add_import(importer="a.x", imported="a.y")
    graph.add_import(importer="a.y", imported="a.x")
    graph.add_import(importer="a.z", imported="a.x")
    assert _cycles(graph) == [["a.x", "a.y"]]


def test_the_hot_path_is_where_the_readme_says() -> None:
    """HTTP → Kafka → adapter → reply in the modules the README's layout names, top to bottom."""
    readme = (ROOT / "README.md").read_text()
    hot = [
        "broker/gateway/exchange.py",
        "broker/model/envelope.py",
        "adapters/runtime/adapter.py",
        "broker/gateway/replies.py",
        "broker/gateway/recorder.py",
    ]
    for path in hot:
        assert (ROOT / path).is_file(), path
        assert path in readme, f"the README's hot path does not name {path}"
    positions = [readme.index(path) for path in hot]
    assert positions == sorted(positions), "the README lists the hot path out of order"
