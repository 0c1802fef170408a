"""The import graph of agi/: the rooms, the one-way rule between them, no cycles (issue 15).

Every import counts: at module level, inside functions (lazy) and under TYPE_CHECKING — a
cycle or a crossing hidden behind a lazy or type-only import is still one a reader has to
untangle. The rooms, bottom up (README "Architecture"):

    wire  ops          imports nothing else of agi
    server             wire, ops
    ledger             ops
    outbound           ledger, wire (the dialplan's variable names), ops
    calls              server, outbound, ledger, wire, ops
    reports            outbound, ledger, ops
    testing            wire, ops
    cli                anything: it wires the rooms together
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "agi"

#: room → the rooms it may import besides itself (None: any)
ROOMS: dict[str, tuple[str, ...] | None] = {
    "wire": (),
    "ops": (),
    "server": ("wire", "ops"),
    "ledger": ("ops",),
    "outbound": ("ledger", "wire", "ops"),
    "calls": ("server", "outbound", "ledger", "wire", "ops"),
    "reports": ("outbound", "ledger", "ops"),
    "testing": ("wire", "ops"),
    "cli": None,
}
#: the modules outside every room: the package itself and ``python -m agi``
OUTSIDE_ROOMS = {"agi", "agi.__main__"}
#: modules held tighter than their room: what of agi they may import (prefixes)
RULES: dict[str, tuple[str, ...]] = {
    # the protocol is sans-IO: bytes in, events out
    "agi.wire.protocol": (),
    # the pure domain: records and rules decide on data, they fetch nothing
    "agi.ledger.records": (),
    "agi.ledger.numbers": (),
    "agi.outbound.policy": (),
    "agi.outbound.model": ("agi.outbound.policy",),
}
#: third-party (and standard) modules a room or module must not touch
FORBIDDEN_LIBRARIES: dict[str, tuple[str, ...]] = {
    "agi.calls": ("asyncpg", "socket", "panoramisk"),
    "agi.server": ("asyncpg", "panoramisk"),
    "agi.wire": ("asyncpg", "panoramisk"),
    "agi.wire.protocol": ("asyncio", "socket"),
    "agi.ledger": ("panoramisk",),
    "agi.ledger.records": ("asyncpg", "asyncio"),
    "agi.outbound.policy": ("asyncpg", "asyncio"),
    "agi.outbound.model": ("asyncpg", "asyncio"),
    "agi.reports": ("panoramisk",),
}


def room_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ROOMS else None


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
                # ``from agi.outbound import policy`` imports the module, not the room's package
                subs = {f"{node.module}.{a.name}" for a in node.names} & modules
                ours.update(subs)
                if len(subs) < len(node.names):
                    ours.add(node.module)
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
        room = room_of(module)
        allowed_rooms = ROOMS.get(room) if room else None
        if room is None and module not in OUTSIDE_ROOMS:
            out.append(f"{module} is in no room (agi/<room>/…: {', '.join(ROOMS)})")
        if allowed_rooms is not None:
            out += [f"{module} imports {m} (room {room} may import: "
                    f"{', '.join(allowed_rooms) or 'nothing else'})"
                    for m in sorted(imported)
                    if room_of(m) not in (room, *allowed_rooms) and m != "agi"]
        for room, allowed in RULES.items():
            if _matches(module, room):
                out += [f"{module} imports {m} (allowed: {', '.join(allowed) or 'nothing'})"
                        for m in sorted(imported)
                        if not any(_matches(m, a) for a in allowed)]
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
    # each room's first forbidden neighbour, and the tighter module rules
    ("agi.wire.channel", "agi.server.call", "agi.wire.channel imports agi.server.call (room wire"),
    ("agi.ops.metrics", "agi.outbound.policy", "agi.ops.metrics imports agi.outbound.policy"),
    ("agi.server.fastagi", "agi.ledger.sessions", "agi.server.fastagi imports agi.ledger.sessions"),
    ("agi.ledger.ledger", "agi.outbound.gate", "agi.ledger.ledger imports agi.outbound.gate"),
    ("agi.outbound.dialer", "agi.calls.marketing", "agi.outbound.dialer imports agi.calls.mark"),
    ("agi.calls.consent", "agi.cli.main", "agi.calls.consent imports agi.cli.main"),
    ("agi.calls.consent", "agi.testing.fakeasterisk", "agi.calls.consent imports agi.testing."),
    ("agi.reports.campaign", "agi.calls.prompts", "agi.reports.campaign imports agi.calls.prompts"),
    ("agi.testing.fake_ami", "agi.outbound.dialer", "agi.testing.fake_ami imports agi.outbound"),
    ("agi.wire.protocol", "agi.wire.channel", "agi.wire.protocol imports agi.wire.channel"),
    ("agi.outbound.policy", "agi.outbound.campaigns", "agi.outbound.policy imports agi.outbound.c"),
    ("agi.ledger.records", "agi.ledger.ledger", "agi.ledger.records imports agi.ledger.ledger"),
])
def test_a_forbidden_import_is_caught(module: str, extra: str, expected: str) -> None:
    graph, libraries = import_graph()
    assert violations(graph, libraries) == []
    graph = {**graph, module: graph[module] | {extra}}
    assert any(v.startswith(expected) for v in violations(graph, libraries)), expected


def test_a_module_outside_the_rooms_is_caught() -> None:
    graph, libraries = import_graph()
    graph = {**graph, "agi.helpers": set()}
    assert "agi.helpers is in no room" in " ".join(violations(graph, libraries))


def test_the_cli_may_wire_every_room() -> None:
    graph, libraries = import_graph()
    graph = {**graph, "agi.cli.main": graph["agi.cli.main"] | {"agi.testing.fake_ami"}}
    assert violations(graph, libraries) == []


def test_a_cycle_is_caught() -> None:
    graph, _ = import_graph()
    graph = {**graph, "agi.ledger.records": graph["agi.ledger.records"] | {"agi.ledger.ledger"}}
    assert any({"agi.ledger.records", "agi.ledger.ledger"} <= set(c) for c in cycles(graph))


def test_a_forbidden_library_is_caught() -> None:
    graph, libraries = import_graph()
    libraries = {**libraries, "agi.calls.dialogue": libraries["agi.calls.dialogue"] | {"asyncpg"}}
    assert "agi.calls.dialogue imports asyncpg" in violations(graph, libraries)


def test_every_room_says_what_it_is() -> None:
    for room in ROOMS:
        doc = ast.get_docstring(ast.parse((PACKAGE / room / "__init__.py").read_text()))
        assert doc, f"agi/{room}/__init__.py has no docstring"


def test_every_module_has_a_docstring() -> None:
    missing = [str(f.relative_to(ROOT)) for f in sorted(PACKAGE.rglob("*.py"))
               if f.name != "__main__.py" and not ast.get_docstring(ast.parse(f.read_text()))]
    assert missing == []
