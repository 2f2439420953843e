"""kseg's import graph: one-way layers, no cycles, no private names imported across modules."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "kseg"


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = ast.parse(path.read_text(encoding="utf-8"))
    return out


def _imports(tree: ast.Module, known: set[str]) -> set[tuple[str, str | None]]:
    """``(module, imported name or None)`` of every kseg import, at any depth of the file."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {(a.name, None) for a in node.names if a.name.startswith("kseg")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kseg"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add((sub, None) if sub in known else (node.module, alias.name))
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    graph = {}
    for name, tree in modules.items():
        targets = set()
        for module, _ in _imports(tree, known):
            while module not in known and "." in module:
                module = module.rpartition(".")[0]
            if module != name and not name.startswith(module + "."):  # a package's own __init__ is no edge
                targets.add(module)
        graph[name] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first repeated at the end), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_inside_kseg():
    graph = _graph()
    assert "kseg.train" in graph and graph["kseg.train"], "the import graph was not read"
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph) or [])}"


def test_no_private_name_is_imported_from_another_module():
    modules = _modules()
    offenders = [
        f"{name} imports {module}.{imported}"
        for name, tree in modules.items()
        for module, imported in _imports(tree, set(modules))
        if imported and imported.startswith("_") and imported != "__version__"
    ]
    assert not offenders, offenders


def test_the_lowest_layers_import_nothing_above_them():
    graph = _graph()
    lowest = {"kseg.errors": set(), "kseg.io": set(), "kseg.progress": set(), "kseg.bits": set()}
    for module, allowed in lowest.items():
        assert graph[module] <= allowed, f"{module} imports {graph[module] - allowed}"
    schema = {name for name in graph if name == "kseg.schema" or name.startswith("kseg.schema.")}
    for module in schema:  # the schema package imports nothing of kseg but the lowest layer and itself
        assert graph[module] <= {"kseg.errors", "kseg.io"} | schema, f"{module} imports {graph[module] - schema}"
    importers = {name for name, targets in graph.items() if "kseg.cli" in targets}
    assert importers <= {"kseg.__main__"}, f"only the entry point may import the CLI, not {importers}"
