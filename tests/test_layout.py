"""The package layout as a rule: who may import whom among proxy/ and supervisor/, read from the
source with `ast` (so it sees imports under `if TYPE_CHECKING:` and inside functions too)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("proxy", "supervisor")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


FILES = {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}
MODULES = set(FILES)


def _imports(name: str, path: Path) -> set[str]:
    """The project modules `name` imports: `import X` counts X; `from X import Y` counts X.Y
    where that is a module, else X. Relative imports are resolved against `name`'s package."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for target in targets:
            # `import proxy.llama.client` names that module; a dotted name that isn't one of
            # ours (a function re-exported by a package) falls back to its longest module prefix.
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target.split(".")[0] in PACKAGES and target != name:
                found.add(target)
    return found


GRAPH = {name: _imports(name, path) for name, path in FILES.items()}


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, …, a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def _edges(importers: str, imported: str) -> list[str]:
    return sorted(
        f"{src} -> {dst}"
        for src, dsts in GRAPH.items()
        if src == importers or src.startswith(importers + ".")
        for dst in dsts
        if dst == imported or dst.startswith(imported + ".")
    )


def test_the_graph_is_read():
    # Guards the checks below against passing on an empty or misread graph.
    assert {"proxy.app", "proxy.llama.client", "proxy.ui.routes", "supervisor.models.store"} <= MODULES
    assert "supervisor.errors" in GRAPH["proxy.llama.client"]
    assert "proxy.llama.wire" in GRAPH["proxy.llama.client"]


def test_no_import_cycle():
    cycle = _find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_dialects_do_not_import_each_other():
    crossings = _edges("proxy.ollama", "proxy.openai") + _edges("proxy.openai", "proxy.ollama")
    assert crossings == [], crossings


def test_the_status_page_and_the_dialects_do_not_import_each_other():
    crossings = [edge for dialect in ("proxy.ollama", "proxy.openai")
                 for edge in _edges("proxy.ui", dialect) + _edges(dialect, "proxy.ui")]
    assert crossings == [], crossings


def test_supervisor_does_not_import_proxy():
    assert _edges("supervisor", "proxy") == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_imports(name):
    importlib.import_module(name)
