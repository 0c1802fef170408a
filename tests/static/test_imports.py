"""The import graph of agi/: no cycles, and the rules the layers keep (issue 15).

Every import counts: at module level, inside functions (lazy) and under TYPE_CHECKING — a
cycle hidden behind a lazy or type-only import is still a cycle a reader has to untangle.
The rules below are the ones today's flat layout can already state; the rooms of issue 15
(wire/, server/, calls/, ledger/, outbound/, ops/, reports/, cli/, testing/) will tighten them.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "agi"

#: module (or prefix) → what of agi it may import (prefixes); None: anything
RULES: dict[str, tuple[str, ...]] = {
    # the wire: the protocol, the typed AGI channel and the dialplan's variable names
    "agi.protocol": (),
    "agi.channel_vars": (),
    "agi.channel": ("agi.protocol",),
    # the flows: no SQL, no sockets, no command line, no test doubles
    "agi.flows": ("agi.flows", "agi.call", "agi.channel", "agi.channel_vars", "agi.protocol",
                  "agi.prompts", "agi.ledger", "agi.numbers", "agi.config", "agi.logconfig",
                  "agi.campaign_model", "agi.campaigns", "agi.gate", "agi.policy",
                  "agi.metrics"),
    # the pure domain rules decide on data, they fetch nothing
    "agi.policy": ("agi.numbers",),
    "agi.campaign_model": ("agi.policy",),
    "agi.numbers": (),
}
#: third-party modules a room must not touch
FORBIDDEN_LIBRARIES: dict[str, tuple[str, ...]] = {
    "agi.flows": ("asyncpg", "socket", "panoramisk"),
    "agi.protocol": ("asyncio", "asyncpg", "socket"),
    "agi.policy": ("asyncpg", "asyncio"),
}
#: only the command line and the tools may import the test doubles
TEST_DOUBLES = "agi.fakeasterisk"
MAY_USE_TEST_DOUBLES = ("agi.cli", "agi.commands", "agi.fakeasterisk")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, modules: set[str]) -> tuple[set[str], set[str]]:
    """(agi modules, top-level libraries) that ``path`` imports, anywhere in it."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    ours: set[str] = set()
    libs: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                (ours if alias.name.startswith("agi") else libs).add(
                    alias.name if alias.name.startswith("agi") else alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("agi"):
                ours.add(node.module)
                ours.update(f"{node.module}.{a.name}" for a in node.names
                            if f"{node.module}.{a.name}" in modules)
            else:
                libs.add(node.module.split(".")[0])
    return {m for m in ours if m in modules and m != "agi"}, libs


def import_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(f) for f in files}
    graph, libraries = {}, {}
    for f in files:
        graph[module_name(f)], libraries[module_name(f)] = imports_of(f, modules)
    return graph, libraries


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _matches(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def violations(graph: Mapping[str, set[str]],
               libraries: Mapping[str, set[str]] | None = None) -> list[str]:
    """Every import against :data:`RULES`, :data:`FORBIDDEN_LIBRARIES` or the test doubles."""
    out = []
    for module, imported in sorted(graph.items()):
        for room, allowed in RULES.items():
            if _matches(module, room):
                out += [f"{module} imports {m} (allowed: {', '.join(allowed) or 'nothing'})"
                        for m in sorted(imported)
                        if not any(_matches(m, a) for a in allowed)]
        if TEST_DOUBLES in imported and not any(_matches(module, a)
                                                for a in MAY_USE_TEST_DOUBLES):
            out.append(f"{module} imports the test double {TEST_DOUBLES}")
        for room, banned in FORBIDDEN_LIBRARIES.items():
            if _matches(module, room) and libraries is not None:
                out += [f"{module} imports {lib}"
                        for lib in sorted(libraries.get(module, set()) & set(banned))]
    return out


def test_the_package_has_no_import_cycle() -> None:
    graph, _ = import_graph()
    assert cycles(graph) == []


def test_every_import_keeps_the_layer_rules() -> None:
    graph, libraries = import_graph()
    assert violations(graph, libraries) == []


@pytest.mark.parametrize(("module", "extra", "expected"), [
    ("agi.protocol", "agi.ledger", "agi.protocol imports agi.ledger (allowed: nothing)"),
    ("agi.flows.consent", "agi.cli", "agi.flows.consent imports agi.cli"),
    ("agi.policy", "agi.campaigns", "agi.policy imports agi.campaigns"),
    ("agi.store", "agi.fakeasterisk", "agi.store imports the test double agi.fakeasterisk"),
])
def test_a_forbidden_import_is_caught(module: str, extra: str, expected: str) -> None:
    graph, libraries = import_graph()
    graph = {**graph, module: graph[module] | {extra}}
    assert any(v.startswith(expected) for v in violations(graph, libraries)), expected


def test_a_cycle_is_caught() -> None:
    graph, _ = import_graph()
    graph = {**graph, "agi.numbers": graph["agi.numbers"] | {"agi.campaigns"}}
    assert any({"agi.numbers", "agi.campaigns"} <= set(c) for c in cycles(graph))


def test_a_forbidden_library_is_caught() -> None:
    graph, libraries = import_graph()
    libraries = {**libraries, "agi.flows.base": libraries["agi.flows.base"] | {"asyncpg"}}
    assert "agi.flows.base imports asyncpg" in violations(graph, libraries)
