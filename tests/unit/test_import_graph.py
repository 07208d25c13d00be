"""The import boundaries between the kernel and the two apps, read from the source with ``ast``.

Every ``import`` counts, at module level and inside functions: a lazy import of the other app
still fails at run time when that app is not installed. The kernel ``inbox_outbox`` knows
neither app; ``outbox`` never imports ``inbox``; ``inbox`` imports ``outbox`` only in the one
documented place (``inbox.testing.deliver_outbox``, a test helper for services that install
both apps). ``inbox_outbox_tasks``, the Django Tasks backend, needs both apps and may import
them; nothing of the three imports it.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("inbox_outbox", "outbox", "inbox", "inbox_outbox_tasks")

#: (importing module, function, imported module): the only allowed cross-app imports.
ALLOWED_CROSS_APP = {("inbox.testing", "deliver_outbox", "outbox.testing")}


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int
    function: str | None  # the enclosing function of a lazy import, None at module level

    def __str__(self) -> str:
        where = f" in {self.function}()" if self.function else ""
        return f"{self.source}:{self.line}{where} imports {self.target}"


def library_sources() -> dict[str, str]:
    """Module name -> source text for every module of the three packages."""
    sources = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            sources[name] = path.read_text()
    return sources


def _is_package(name: str, sources: dict[str, str]) -> bool:
    return any(other.startswith(name + ".") for other in sources)


def _resolve(name: str, node: ast.ImportFrom, sources: dict[str, str]) -> str:
    if not node.level:
        return node.module or ""
    base = name.split(".") if _is_package(name, sources) else name.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _library_module(dotted: str, sources: dict[str, str]) -> str | None:
    """The longest prefix of ``dotted`` that is a library module (``None`` for other code)."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in sources:
            return candidate
    return None


def edges_of(name: str, sources: dict[str, str]) -> list[Edge]:
    """Every import in module ``name`` of another library module, lazy ones included."""
    found: list[Edge] = []

    def visit(node: ast.AST, function: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            inner = (
                child.name
                if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
                else function
            )
            targets: list[str] = []
            if isinstance(child, ast.Import):
                targets = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = _resolve(name, child, sources)
                # `from pkg import mod` imports the submodule; `from mod import name` the module.
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in sources else base
                    for alias in child.names
                ]
            for target in targets:
                module = _library_module(target, sources)
                if module is not None and module != name:
                    found.append(Edge(name, module, child.lineno, function))
            visit(child, inner)

    visit(ast.parse(sources[name], filename=name), None)
    return found


def all_edges(sources: dict[str, str]) -> list[Edge]:
    return [edge for name in sorted(sources) for edge in edges_of(name, sources)]


def cycles(edges: list[Edge]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for edge in edges:
        graph.setdefault(edge.source, set()).add(edge.target)
        graph.setdefault(edge.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def _top(module: str) -> str:
    return module.split(".")[0]


def boundary_violations(edges: list[Edge]) -> list[str]:
    """Imports that cross a boundary: kernel -> app, outbox -> inbox, inbox -> outbox, and
    anything of those -> the tasks backend."""
    forbidden = {
        "inbox_outbox": {"outbox", "inbox", "inbox_outbox_tasks"},
        "outbox": {"inbox", "inbox_outbox_tasks"},
        "inbox": {"outbox", "inbox_outbox_tasks"},
        "inbox_outbox_tasks": set(),
    }
    return [
        str(edge)
        for edge in edges
        if _top(edge.target) in forbidden[_top(edge.source)]
        and (edge.source, edge.function, edge.target) not in ALLOWED_CROSS_APP
    ]


def test_the_library_has_no_import_cycle():
    assert cycles(all_edges(library_sources())) == []


def test_the_kernel_and_each_app_import_only_across_the_allowed_boundaries():
    assert boundary_violations(all_edges(library_sources())) == []


def test_the_one_allowed_cross_app_import_is_still_where_it_is_documented():
    # If it moved or went away, ALLOWED_CROSS_APP must change with it.
    edges = all_edges(library_sources())
    crossing = {(e.source, e.function, e.target) for e in edges if _top(e.source) != _top(e.target)}
    assert ALLOWED_CROSS_APP.issubset(crossing)


def test_the_graph_sees_relative_absolute_and_lazy_imports():
    edges = {(e.source, e.target, e.function) for e in all_edges(library_sources())}
    assert ("inbox.consumer", "inbox.processing", None) in edges  # from .processing import
    assert ("inbox.apps", "inbox_outbox.checks", "ready") in edges  # from pkg import module, lazy
    assert ("outbox.checks", "inbox_outbox.checks", None) in edges  # absolute
    assert ("inbox.management.commands.inbox_replay", "inbox.models", None) in edges


# The rules must fail when someone adds a forbidden import: each case below adds one line to
# a real module's source and expects it to be reported.
@pytest.mark.parametrize(
    ("module", "added", "expected"),
    [
        ("inbox_outbox.conf", "from outbox.models import OutboxMessage\n", "imports outbox.models"),
        ("inbox_outbox.broker", "import inbox.registry\n", "imports inbox.registry"),
        (
            "outbox.relay",
            "def later():\n    from inbox import processing\n",
            "in later() imports inbox.processing",
        ),
        ("inbox.processing", "from outbox.relay import Relay\n", "imports outbox.relay"),
        (
            "inbox.testing",
            "def deliver_other():\n    from outbox.testing import relay_to\n",
            "in deliver_other() imports outbox.testing",
        ),
        ("inbox.consumer", "from outbox import publish\n", "imports outbox"),
        (
            "outbox.publishing",
            "from inbox_outbox_tasks.models import TaskRun\n",
            "imports inbox_outbox_tasks.models",
        ),
    ],
)
def test_an_added_import_across_a_boundary_is_reported(module, added, expected):
    sources = library_sources()
    sources[module] += "\n" + added
    violations = boundary_violations(all_edges(sources))
    assert any(f"{module}:" in v and v.endswith(expected) for v in violations), violations


def test_an_added_import_that_closes_a_loop_is_reported_as_a_cycle():
    sources = library_sources()
    # outbox.relay imports outbox.publisher; the reverse import, even lazy, closes a loop.
    sources["outbox.publisher"] += "\n\ndef later():\n    from .relay import Relay\n"
    assert ["outbox.publisher", "outbox.relay"] in cycles(all_edges(sources))
