"""The package's import structure: no cycles, and no import from a lower layer up to a higher one.

Every ``import`` in ``spnas/`` counts, including the lazy ones inside functions (they are still
dependencies; laziness only keeps ``--help`` fast).  Layers, bottom up, as docs/ describe them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "spnas"
LAYERS = [
    ("foundation", ["errors", "version", "console", "io", "staging", "parity", "classes", "machine", "data",
                    "frameworks"]),
    ("architecture, weights and their preprocessing", ["arch", "preprocess", "model", "weights", "folding",
                                                       "create"]),
    ("images and sources", ["intake", "images", "source"]),
    ("int8 plan", ["quantize"]),
    ("formats", ["export", "accelerators", "mil_eval"]),
    ("verification and latency", ["reference", "gates", "tables", "report", "validation", "artifact_intake",
                                  "node_data", "faults", "arm64", "bench", "android"]),
    ("pipeline", ["pipeline"]),
    ("entry points", ["api", "cli"]),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    """The spnas modules ``path`` imports (``from spnas.x import name`` names module ``spnas.x.name`` if it is one)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names}
    resolved = set()
    for target in found:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != name:
            resolved.add(target)
    return resolved


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    files = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {name: imports(path, set(files)) for name, path in files.items()}


def layer_of(module: str) -> int | None:
    """The layer index of ``spnas.x.y`` (by its top-level name); None for the root package, the facade above all."""
    top = module.split(".")[1] if "." in module else None
    return next((index for index, (_, names) in enumerate(LAYERS) if top in names), None) if top else len(LAYERS)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
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
            visit(node)
    return found


def test_every_module_has_a_layer(graph):
    assert [name for name in graph if layer_of(name) is None] == []


def test_no_import_cycles(graph):
    assert cycles(graph) == []


def test_no_import_runs_back_up_the_layers(graph):
    upward = [f"{source} ({LAYERS[layer_of(source)][0]}) -> {target} ({LAYERS[layer_of(target)][0]})"
              for source, targets in graph.items() if source != "spnas" for target in targets
              if target != "spnas" and layer_of(target) > layer_of(source)]
    assert upward == []


GUEST_SCRIPTS = ("spnas.arm64.guest_runner",)  # run as a script inside the emulated guest, importing no spnas


def test_the_library_imports_no_command_line():
    """The library, ``spnas.pipeline`` included, parses no flags: argparse lives in ``spnas.cli`` only."""
    allowed = ("spnas.cli", *GUEST_SCRIPTS)
    offenders = [module_name(path) for path in PACKAGE.rglob("*.py")
                 if "argparse" in imports_of_any(path) and not module_name(path).startswith(allowed)]
    assert offenders == []


def imports_of_any(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def test_cycle_finder_finds_a_cycle():
    """The checks above can fail: a two-module loop and an upward arrow are found."""
    assert cycles({"spnas.a": {"spnas.b"}, "spnas.b": {"spnas.a"}, "spnas.c": set()}) == [["spnas.a", "spnas.b"]]
    assert layer_of("spnas.cli.export") > layer_of("spnas.export.onnx") > layer_of("spnas.quantize.plan")


def test_no_module_replaces_its_own_class():
    """A module made callable (``sys.modules[__name__].__class__ = ...``) surprises every reader and tool."""
    offenders = [str(path) for path in PACKAGE.rglob("*.py") if "sys.modules[__name__].__class__" in path.read_text()]
    assert offenders == []
