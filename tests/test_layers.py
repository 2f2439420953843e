"""kseg's import graph: folders by role whose imports run one way (a table of what each folder may use),
no cycles, no private names imported across modules."""

from __future__ import annotations

import ast
from collections import defaultdict
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
    assert "kseg.training.train" in graph and graph["kseg.training.train"], "the import graph was not read"
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
    lowest = {"kseg.errors": set(), "kseg.io": set(), "kseg.common": set(), "kseg.bits": set()}
    for module, allowed in lowest.items():
        assert graph[module] <= allowed, f"{module} imports {graph[module] - allowed}"
    schema = {name for name in graph if name == "kseg.schema" or name.startswith("kseg.schema.")}
    for module in schema:  # the schema package imports nothing of kseg but the lowest layer and itself
        assert graph[module] <= {"kseg.errors", "kseg.io"} | schema, f"{module} imports {graph[module] - schema}"
    importers = {name for name, targets in graph.items() if "kseg.cli" in targets}
    assert importers <= {"kseg.__main__"}, f"only the entry point may import the CLI, not {importers}"


# unit -> the units it may import (a unit is a folder of kseg, or a module at kseg's top level). Lower layers
# first; nothing may import cli, and only cli and demo may import everything.
ALLOWED: dict[str, set[str]] = {
    "common": set(),
    "errors": set(),
    "io": set(),
    "rle": set(),  # the RLE codec: numpy only
    "schema": set(),
    "parallel": {"common"},
    "config": {"errors", "io", "schema"},
    "bits": set(),
    "runtime": {"errors", "schema"},
    "plotting": {"io", "schema"},
    "metrics": {"bits"},
    "models": {"config", "errors", "io", "metrics", "schema"},
    "workspace": {"common", "config", "errors", "io", "metrics", "schema"},
    "data": {"bits", "common", "config", "errors", "io", "parallel", "plotting", "rle", "schema", "workspace"},
    "postprocess": {"bits", "common", "config", "data", "errors", "metrics", "workspace"},
    "planning": {"common", "config", "data", "errors", "io", "parallel", "rle"},
    "submission": {"bits", "common", "config", "data", "errors", "io", "metrics", "postprocess", "rle", "workspace"},
    "synth": {"common", "config", "data", "errors", "io", "metrics", "rle", "submission"},
    "prediction": {
        *("common", "config", "data", "errors", "io", "models", "plotting", "postprocess", "runtime", "workspace"),
    },
    "training": {
        *("bits", "common", "config", "data", "errors", "io", "metrics", "models", "plotting", "prediction"),
        *("runtime", "workspace"),
    },
    "cv": {"common", "config", "data", "errors", "io", "metrics", "plotting", "postprocess", "prediction", "workspace"},
    "codecomp": {"config", "errors", "io", "prediction", "submission", "workspace"},  # packs a bundle; never trains
    "render": {"common", "config", "metrics", "planning"},
    "demo": {"config", "cv", "data", "errors", "postprocess", "prediction", "submission", "synth", "training"}
    | {"workspace"},
    "cli": {
        "codecomp",
        "config",
        "cv",
        "data",
        "demo",
        "errors",
        "io",
        "models",
        "planning",
        "postprocess",
        "prediction",
    }
    | {"render", "submission", "synth", "training", "workspace"},
    "__main__": {"cli"},
    "__init__": set(),
}


def _unit(module: str) -> str:
    """``kseg.training.train`` -> ``training``; ``kseg.io`` -> ``io``; ``kseg`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _edges() -> dict[str, set[str]]:
    """The module graph (``_graph``) seen from the folders: unit -> the units it imports."""
    edges: dict[str, set[str]] = defaultdict(set)
    for module, targets in _graph().items():
        source = _unit(module)
        edges[source] |= {_unit(t) for t in targets} - {source}
    return edges


def test_every_import_runs_the_way_the_table_allows():
    edges = _edges()
    units = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir() if p.suffix == ".py" or p.is_dir()}
    units -= {"__pycache__"}
    assert units <= set(ALLOWED), f"units without a row in the table: {sorted(units - set(ALLOWED))}"
    wrong = sorted(f"{a} -> {b}" for a, targets in edges.items() for b in targets if b not in ALLOWED[a])
    assert not wrong, "imports against the layers: " + ", ".join(wrong)


def test_the_table_has_no_cycle_and_its_key_rules_hold():
    """prediction never imports training, cv or cli; the codec, the submission files and the planner never
    reach a model; the metrics read label maps only."""
    done: set[str] = set()

    def visit(unit: str, path: tuple[str, ...]) -> None:
        assert unit not in path, f"cycle: {' -> '.join((*path, unit))}"
        if unit not in done:
            for dep in ALLOWED[unit]:
                visit(dep, (*path, unit))
            done.add(unit)

    for unit in ALLOWED:
        visit(unit, ())

    def reach(unit: str) -> set[str]:
        seen, todo = set(), [unit]
        while todo:
            for dep in ALLOWED[todo.pop()] - seen:
                seen.add(dep)
                todo.append(dep)
        return seen

    assert not reach("prediction") & {"training", "cv", "cli", "demo"}
    assert not reach("submission") & {"training", "prediction", "models", "runtime"}
    assert not reach("planning") & {"training", "prediction", "models", "runtime"}
    assert reach("rle") == set() and reach("metrics") == {"bits"}
    assert all("cli" not in deps for unit, deps in ALLOWED.items() if unit != "__main__")
