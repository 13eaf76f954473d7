"""The package's arrows run one way, read from the source (every import, lazy ones included).

pstyle's folders form layers: the core (models, quality, training, adapters, store, serving and the
modules they share) never reaches the drivers above it (distributed, cli, bench, demo, serve/,
ray_jobs/); only entry points import the CLI; Ray is imported only where a driver needs it; and no
two layers import each other, directly or round a longer loop.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OUR_ROOTS = {"pstyle", "serve", "ray_jobs"}
CORE = {
    "config",
    "images",
    "ids",
    "data",
    "models",
    "quality",
    "training",
    "adapters",
    "evaluation",
    "store",
    "serving",
}
DRIVERS = {"distributed", "cli", "bench", "demo", "serve", "ray_jobs"}
RAY_USERS = {"distributed", "bench", "demo", "serve", "ray_jobs"}


def unit_of(module: str) -> str:
    """`pstyle.models.encoder` -> `models`; `serve.app` -> `serve`: the layer a module belongs to."""
    parts = module.split(".")
    return parts[1] if parts[0] == "pstyle" and len(parts) > 1 else parts[0]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module `path` imports, anywhere in the file (function bodies too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def source_graph() -> dict[str, set[str]]:
    """Module -> the modules of ours (and Ray's) that it imports."""
    files = [p for folder in sorted(OUR_ROOTS) for p in sorted((ROOT / folder).rglob("*.py"))]
    graph = {module_name(p): imports_of(p) for p in files}
    ours = set(graph)
    return {m: {t for t in targets if t in ours or t.split(".")[0] == "ray"} for m, targets in graph.items()}


def forbidden_arrows(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, targets in graph.items():
        src = unit_of(module)
        for target in targets:
            dst, top = unit_of(target), target.split(".")[0]
            if src in CORE and dst in DRIVERS and top in OUR_ROOTS:
                bad.append(f"{module} -> {target} (the core imports a driver)")
            if target.startswith("pstyle.cli") and src != "cli" and module != "pstyle.__main__":
                bad.append(f"{module} -> {target} (only entry points import the CLI)")
            if top == "ray" and src not in RAY_USERS:
                bad.append(f"{module} -> {target} (Ray outside the drivers)")
    return sorted(bad)


def layer_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Loops between layers (pstyle's folders and top-level modules), found by depth-first search."""
    edges: dict[str, set[str]] = {}
    for module, targets in graph.items():
        for target in targets:
            if target.split(".")[0] in OUR_ROOTS and unit_of(target) != unit_of(module):
                edges.setdefault(unit_of(module), set()).add(unit_of(target))
    cycles: list[list[str]] = []
    state: dict[str, str] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    return cycles


def test_no_forbidden_arrow_in_the_tree():
    assert forbidden_arrows(source_graph()) == []


def test_no_two_layers_import_each_other():
    assert layer_cycles(source_graph()) == []


def test_every_package_says_its_job():
    for init in sorted((ROOT / "pstyle").rglob("__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc.split()) >= 5, f"{init.relative_to(ROOT)} has no docstring saying its job"


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"pstyle.models.encoder": {"pstyle.distributed.tune"}}, "the core imports a driver"),
        ({"pstyle.serving.replica": {"serve.app"}}, "the core imports a driver"),
        ({"ray_jobs.tune_base": {"pstyle.cli.main"}}, "only entry points import the CLI"),
        ({"pstyle.store.registry": {"ray"}}, "Ray outside the drivers"),
    ],
)
def test_the_checker_catches_each_kind_of_wrong_arrow(graph, expected):
    (message,) = forbidden_arrows(graph)
    assert expected in message


def test_the_checker_catches_a_loop_between_layers():
    graph = {
        "pstyle.store.base": {"pstyle.training.checkpoint"},
        "pstyle.training.checkpoint": {"pstyle.store.base"},
    }
    assert layer_cycles(graph) == [["store", "training", "store"]]
