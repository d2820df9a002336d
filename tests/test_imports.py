"""The package's import graph: no cycles (lazy imports inside functions count too), and importing ``graphprune``
loads none of the optional layers."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import graphprune

ROOT = Path(graphprune.__file__).parent
OPTIONAL = ("onnx", "onnxruntime", "onnxscript", "matplotlib", "vllm")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def imported(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its source (top level, in functions, under
    ``TYPE_CHECKING``), each as the most specific module; with the packages above it that ``name`` is not in, whose
    ``__init__`` runs first."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(part for part in (base, node.module) if part)
            targets |= {f"{module}.{a.name}" if f"{module}.{a.name}" in known else module for a in node.names}
    edges = set()
    for target in targets:
        while target and target not in known:  # "pkg.module.attribute" -> "pkg.module"; outside modules vanish
            target = target.rpartition(".")[0]
        if target and target != name:  # what the statement names, even a package above this module
            edges.add(target)
        target = target.rpartition(".")[0]
        while target and target != name and not name.startswith(target + "."):  # the packages run on the way
            edges.add(target)
            target = target.rpartition(".")[0]
    return edges


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imported(name, path, known) for name, path in known.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The graph's strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
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


def test_import_graph_has_no_cycles():
    assert cycles(import_graph()) == []


def test_no_module_imports_the_package_root():
    graph = import_graph()
    assert [name for name, targets in graph.items() if "graphprune" in targets] == []


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_imports_resolve_to_the_modules_they_load():
    graph = import_graph()
    assert {"graphprune.layout", "graphprune.masks", "graphprune.ops"} <= graph["graphprune.capture"]
    assert "graphprune" not in graph["graphprune.capture"]  # "from . import masks" names modules, not the package
    assert "graphprune.models" in graph["graphprune.runtime"] and "graphprune.layout" in graph["graphprune.models.base"]
    assert "graphprune._version" in graph["graphprune.export.onnx_export"]


def test_importing_graphprune_loads_no_optional_layer():
    code = "import sys, graphprune; print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    loaded = set(
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()
    )
    assert loaded.isdisjoint(OPTIONAL), sorted(loaded & set(OPTIONAL))


def family_folder(name: str) -> str | None:
    """``graphprune.families.<folder>`` for a module inside a family folder (its record and its layers)."""
    parts = name.split(".")
    return ".".join(parts[:3]) if len(parts) >= 3 and parts[1] == "families" and parts[2] != "record" else None


def test_nothing_imports_a_family_folder_s_layers_but_that_folder_and_other_folders():
    """The family folders are the top layer: the core reaches their adapter, export, vLLM, testing and layout
    modules only through the records' "module:attribute" strings, never by an import."""
    graph = import_graph()
    upward = [
        (name, target)
        for name, targets in graph.items()
        for target in targets
        if family_folder(target) and target != family_folder(target) and not family_folder(name)
    ]
    assert upward == []


def test_the_records_import_only_the_record_type_and_the_methods():
    graph = import_graph()
    records = [name for name in graph if name == "graphprune.families" or family_folder(name) == name]
    assert len(records) > 10
    allowed = {"graphprune.families.record", "graphprune.methods", *records}
    assert {name: graph[name] - allowed for name in records} == {name: set() for name in records}


def test_importing_the_records_loads_no_family_layer():
    code = (
        "import sys, graphprune, graphprune.families; "
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('graphprune.families.'))))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()
    assert loaded and all(family_folder(name) == name or name == "graphprune.families.record" for name in loaded)
