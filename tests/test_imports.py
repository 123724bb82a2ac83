"""The package's dependencies point one way, down the data flow (../shared/STYLE.md):

    foundations -> delta -> chunk -> embed -> index -> retrieval -> generation -> pipelines

Read statically (ast, nothing imported): every ``import`` counts, also those inside functions
and under ``TYPE_CHECKING``, since a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lib" / "sparkrag"
# Each module's place in the flow; a module may import only from its own place or earlier.
LAYERS = ["foundations", "delta", "chunk", "embed", "index", "retrieval", "generation", "pipelines"]
FOUNDATIONS = {"sparkrag", "sparkrag.errors", "sparkrag.redact", "sparkrag.config", "sparkrag.schemas",
               "sparkrag.spark", "sparkrag.models", "sparkrag.hf_compat", "sparkrag.shipped"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ["sparkrag", *path.relative_to(PACKAGE).with_suffix("").parts]
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def layer(module: str) -> str:
    if module in FOUNDATIONS:
        return "foundations"
    name = module.split(".")[1]
    assert name in LAYERS, f"{module}: not in the layer map of tests/test_imports.py; add it where it belongs"
    return name


def imports_of(module: str) -> set[str]:
    """The sparkrag modules ``module`` imports (``from pkg import mod`` counts as ``pkg.mod``)."""
    out = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "sparkrag"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "sparkrag":
            subs = {f"{node.module}.{a.name}" for a in node.names} & MODULES.keys()
            out |= subs or {node.module}
    return {m for m in out if m in MODULES} - {module}


GRAPH = {m: imports_of(m) for m in MODULES}


def against_the_flow(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{m} ({layer(m)}) imports {d} ({layer(d)})" for m, deps in graph.items() for d in deps
                  if LAYERS.index(layer(d)) > LAYERS.index(layer(m)))


def cycles(graph: dict[str, set[str]]) -> list[str]:
    """One line per back edge found by a depth-first walk: each closes a cycle."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    found: list[str] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        path = path + [module]
        for dep in sorted(graph.get(module, ())):
            if state.get(dep) == 1:
                found.append(" -> ".join(path[path.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, path)
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    return found


def test_every_module_has_a_layer():
    assert all(layer(m) in LAYERS for m in MODULES)


def test_no_import_runs_against_the_data_flow():
    assert not against_the_flow(GRAPH), "\n".join(against_the_flow(GRAPH))


def test_no_import_cycles():
    assert not cycles(GRAPH), "\n".join(cycles(GRAPH))


def test_the_checks_catch_what_they_are_for():
    """The walk reads real edges, and both checks fail on a graph that breaks their rule."""
    assert "sparkrag.delta.tables" in GRAPH["sparkrag.delta.native"]
    assert "sparkrag.index.sync" in GRAPH["sparkrag.pipelines.ingest"]
    assert against_the_flow({"sparkrag.index.sync": {"sparkrag.pipelines.runs"}}) == [
        "sparkrag.index.sync (index) imports sparkrag.pipelines.runs (pipelines)"]
    assert cycles({"sparkrag.index.sync": {"sparkrag.index.build"}, "sparkrag.index.build": {"sparkrag.index.sync"}}
                  ) == ["sparkrag.index.build -> sparkrag.index.sync -> sparkrag.index.build"]


def test_files_stay_small():
    """Modules of ~400 lines at most (450 tolerated)."""
    long_files = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
                  if (n := len(p.read_text(encoding="utf-8").splitlines())) > 450}
    assert not long_files, f"modules over ~400 lines: {long_files}"
