"""Imports between wmtp_hf's parts and between its modules run one way (docs/design.md §10), read from
the source with `ast`.

A *part* is a subpackage (`wmtp_hf.train`, `wmtp_hf.data`, ...) or a top-level module
(`wmtp_hf.weighting`, `wmtp_hf.loading`, ...). Every import counts, at module level, inside a function or
under `if TYPE_CHECKING:` (a lazy import is still a dependency: it only hides a circle until the function
runs). A `__main__.py` is a program on top of its package, not library code, so it is a part of its own
(`wmtp_hf.data.__main__` may use the reference model to add its column). Between modules (files) there is
no circle at all, inside a part as well as across parts.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "wmtp_hf"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(name: str) -> set[str]:
    """The wmtp_hf modules `name` imports (relative imports resolved; `from pkg import submodule` is the
    submodule)."""
    path = modules()[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [
                f"{module}.{a.name}" if f"{module}.{a.name}" in modules() else module for a in node.names
            ]
        else:
            continue
        found |= {t for t in targets if t == "wmtp_hf" or t.startswith("wmtp_hf.")}
    return found


def part(module: str) -> str:
    """`wmtp_hf.train.stages.rho1` -> `train`; `wmtp_hf.data.__main__` -> `data.__main__`; the root -> ``."""
    parts = module.split(".")[1:]
    if not parts:
        return ""
    return f"{parts[0]}.__main__" if parts[-1] == "__main__" and len(parts) > 1 else parts[0]


@cache
def part_graph() -> dict[str, dict[str, list[str]]]:
    """part -> {imported part: ["importing module -> imported module", ...]} (self-imports left out)."""
    graph: dict[str, dict[str, list[str]]] = {}
    for name in modules():
        for target in imported_modules(name):
            a, b = part(name), part(target)
            graph.setdefault(a, {})
            if a != b:
                graph[a].setdefault(b, []).append(f"{name} -> {target}")
    return graph


def reaches(start: str, goal: str) -> list[str] | None:
    """An import path from part `start` to part `goal`, as module edges, or None."""
    graph, seen, stack = part_graph(), {start}, [(start, [])]
    while stack:
        node, path = stack.pop()
        for nxt, edges in graph.get(node, {}).items():
            if nxt == goal:
                return [*path, edges[0]]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, edges[0]]))
    return None


def test_the_parser_sees_known_imports():
    # guards the checks below against a parser that finds nothing
    assert "wmtp_hf.weighting" in imported_modules("wmtp_hf.train.stages.verifiable")
    assert "wmtp_hf.loading" in imported_modules("wmtp_hf.train.components")  # `from .. import loading`
    assert "wmtp_hf.execution.harness" in imported_modules("wmtp_hf.evaluation.runner")
    assert "wmtp_hf.execution" in imported_modules("wmtp_hf.data.offline")  # inside a function
    assert reaches("train", "losses") is not None and reaches("experiment", "train") is not None


def module_graph() -> dict[str, set[str]]:
    """module -> the wmtp_hf modules it imports (itself left out)."""
    return {name: imported_modules(name) - {name} for name in modules()}


def module_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every group of modules that import each other round in a circle (Tarjan's strongly connected
    components of `graph`, groups of two or more), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while not group or group[-1] != node:
                group.append(stack.pop())
            if len(group) > 1:
                groups.append(sorted(group))

    for name in graph:
        if name not in index:
            visit(name)
    return groups


def test_module_cycles_are_found():
    """The circle finder on the real graph with circles added: a pair, and one through three files."""
    graph = module_graph()
    plan, measure = "wmtp_hf.experiment.plan", "wmtp_hf.experiment.measure"
    assert plan in graph[measure]
    assert [measure, plan] in module_cycles({**graph, plan: graph[plan] | {measure}})
    a, b, c = "wmtp_hf.data.mutations", "wmtp_hf.data.packing", "wmtp_hf.errors"  # import no wmtp_hf module
    assert not graph[a] | graph[b] | graph[c]
    assert module_cycles({**graph, a: {b}, b: {c}, c: {a}}) == [[a, b, c]]


def test_no_module_imports_itself_back():
    """No file reaches itself through imports (the circles once were `experiment/control.py -> measure.py
    -> plan.py -> control.py` and `train/config.py <-> train/fsdp.py`)."""
    assert module_cycles(module_graph()) == []


def test_no_part_imports_itself_back():
    cycles = {}
    for a, targets in part_graph().items():
        for b, edges in targets.items():
            back = reaches(b, a)
            if back is not None:
                cycles[f"{a} <-> {b}"] = [edges[0], *back]
    assert not cycles, cycles


@pytest.mark.parametrize(
    "importer, forbidden",
    [
        ("inspection", "train"),
        ("weighting", "train"),
        ("weighting", "inspection"),
        ("losses", "weighting"),
        ("stats", "weighting"),
        ("data", "evaluation"),
        ("data", "reference"),
        ("data", "train"),
        ("execution", "evaluation"),
        ("execution", "data"),
        ("evaluation", "train"),
        ("loading", "train"),
        ("loading", "evaluation"),
    ],
)
def test_dependency_directions(importer, forbidden):
    assert reaches(importer, forbidden) is None, reaches(importer, forbidden)


def test_the_layer_order():
    for upper, lower in [("train", "inspection"), ("inspection", "weighting"), ("weighting", "losses")]:
        assert reaches(upper, lower) is not None, f"{upper} no longer uses {lower}: update docs/design.md §10"


def test_the_model_files_import_only_torch_transformers_and_each_other():
    model_files = {"wmtp_hf.configuration_wmtp", "wmtp_hf.modeling_wmtp"}
    closure, todo = set(), list(model_files)
    while todo:
        name = todo.pop()
        if name in closure:
            continue
        closure.add(name)
        todo += [m for m in imported_modules(name) if m != "wmtp_hf"]
    for name in closure:
        tree = ast.parse(modules()[name].read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                continue  # a sibling, in the closure
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else ([node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            )
            for n in names:
                top = n.split(".")[0]
                assert top in {"torch", "transformers", "__future__", "typing", "dataclasses", "math",
                               "collections", "functools", "copy", "warnings", "inspect", "os", "json",
                               "re", "pathlib", "contextlib", "itertools", "types", "abc"}, (name, n)  # fmt: skip
