"""The package's import graph has no cycles, counting imports inside functions too.

A cycle that only works because one side imports lazily is still a cycle: the two modules
cannot be understood, tested or replaced apart. Read from the source with `ast`, nothing run.
"""

from __future__ import annotations

import ast
from pathlib import Path

from .conftest import REPO

PACKAGE = REPO / "t2v_exp"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The package modules `path` imports (``from . import x`` resolves to the submodule x)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in known else base)
    return {module for module in found if module in known and module != name}


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    known = {module_name(path) for path in paths}
    return {module_name(path): imported_modules(path, known) for path in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for child in sorted(graph.get(node, ())):
            # A package's __init__ re-exporting its submodules is not a cycle through the package.
            if child == node.rpartition(".")[0] and node.startswith(child + "."):
                continue
            if state.get(child) == 1:
                return path[path.index(child):] + [child]
            if child not in state and (cycle := visit(child)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_checker_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_package_has_no_import_cycles():
    graph = import_graph()
    assert "t2v_exp.models.common" in graph and graph["t2v_exp.models.cogvideox"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


# -- layering ------------------------------------------------------------------------------------
# The top level holds the entrypoints (thin readers of a config) and the foundations every layer
# may use; everything else lives in a package named for its role.
ENTRYPOINTS = {f"t2v_exp.{name}" for name in ("train", "evaluate", "generate", "report", "preflight", "weights", "rate")}
FOUNDATIONS = {f"t2v_exp.{name}" for name in ("config", "errors", "quiet", "help")}
# What the engine may know of the model families: the facade, the protocol every family implements
# and the declared spec; never a family module or a family's helpers.
ENGINE_MAY_IMPORT_FROM_MODELS = {"t2v_exp.models", "t2v_exp.models.protocol", "t2v_exp.models.spec"}


def is_top_level(module: str) -> bool:
    """A module directly under t2v_exp/ (a subpackage's __init__ is its package, not the top level)."""
    return module.count(".") == 1 and not (PACKAGE / module.split(".")[1]).is_dir()


def layering_violations(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for module, imports in sorted(graph.items()):
        in_package = not is_top_level(module) and module != "t2v_exp"
        for target in sorted(imports):
            if module not in ENTRYPOINTS and target in ENTRYPOINTS:
                found.append(f"{module} -> {target}: a library imports an entrypoint")
            elif in_package and is_top_level(target) and target not in FOUNDATIONS:
                found.append(f"{module} -> {target}: a package imports a top-level module beyond the foundations")
            if (module.startswith("t2v_exp.engine.") and target.startswith("t2v_exp.models")
                    and target not in ENGINE_MAY_IMPORT_FROM_MODELS):
                found.append(f"{module} -> {target}: the engine knows models through the protocol only")
    return found


def test_the_layering_checker_finds_each_kind_of_violation():
    graph = {
        "t2v_exp.metrics.fvd": {"t2v_exp.weights", "t2v_exp.config"},       # upward, and into an entrypoint
        "t2v_exp.reporting.table": {"t2v_exp.comparison"},                  # upward into a library
        "t2v_exp.engine.trainer": {"t2v_exp.models.cogvideox", "t2v_exp.models.protocol"},
        "t2v_exp.train": {"t2v_exp.engine.trainer", "t2v_exp.models.cogvideox"},  # entrypoints may
    }
    found = layering_violations(graph)
    assert found == [
        "t2v_exp.engine.trainer -> t2v_exp.models.cogvideox: the engine knows models through the protocol only",
        "t2v_exp.metrics.fvd -> t2v_exp.weights: a library imports an entrypoint",
        "t2v_exp.reporting.table -> t2v_exp.comparison: a package imports a top-level module beyond the foundations",
    ]


def test_the_package_keeps_its_layers():
    graph = import_graph()
    assert graph["t2v_exp.train"], "the graph reads the entrypoints' imports"
    violations = layering_violations(graph)
    assert not violations, "\n".join(violations)


def test_the_top_level_holds_only_entrypoints_and_foundations():
    top = {module for module in import_graph() if is_top_level(module)}
    assert top - ENTRYPOINTS - FOUNDATIONS == set(), "a library at the top level: give it a package named for its role"
    assert {"t2v_exp.train", "t2v_exp.config"} <= top
