# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""The package's modules import each other without cycles (imports inside functions count too).

Subpackages and top-level modules are the nodes; a cycle between two of them means neither can be understood, tested
or replaced without the other.
"""

from __future__ import annotations

import ast
import os

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "monai_diffad")


def _node(module: str) -> str:
    """``monai_diffad.<first part>``: a subpackage or a top-level module."""
    return ".".join(module.split(".")[:2])


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for root, _, files in os.walk(PACKAGE):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(root, name)
            module = os.path.relpath(path[:-3], os.path.dirname(PACKAGE)).replace(os.sep, ".")
            source = _node(module.removesuffix(".__init__"))
            for node in ast.walk(ast.parse(open(path).read())):
                names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                for target in (_node(n) for n in names if n.startswith("monai_diffad.")):
                    if target != source:
                        graph.setdefault(source, set()).add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path ``[a, ..., a]``, or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if state.get(nxt) is None and (cycle := visit(nxt, path + [nxt])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if state.get(start) is None and (cycle := visit(start, [start])):
            return cycle
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}}) is None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert "monai_diffad.inferers" in graph  # the walk saw the package
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph) or [])}"
