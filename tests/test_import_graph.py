"""The import graph of server/, client/, training/ and export/: no circle anywhere, and layers that
point one way (training -> checkpoint -> export -> repository -> server -> client).

Every module is parsed with `ast`, never imported, so the test sees each import statement whether it
runs or not. An import inside a function (done lazily, to keep torch out of `--help` or the server
out of a torch-free install) counts exactly like one at the top of the module: it is still a
dependency, and a circle through it is still a circle that breaks when the import moves. A name
imported from a package (`from training import prior`) is an edge to that submodule. Parent
packages that Python runs on the way (`training/__init__.py`) are not edges: they import nothing here.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("server", "client", "training", "export")
GENERATED = "server.proto_gen"  # protoc's stubs import only protobuf and each other


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {
    module_name(p): p
    for package in PACKAGES
    for p in sorted((ROOT / package).rglob("*.py"))
    if not module_name(p).startswith(GENERATED)
}


def _ours(name: str) -> str | None:
    """The module of ours that importing `name` loads (its longest known prefix), None if foreign."""
    while name and name not in MODULES and not name.startswith(GENERATED):
        name = name.rpartition(".")[0]
    return GENERATED if name.startswith(GENERATED) else (name or None)


def imports(module: str) -> dict[str, set[str]]:
    """Every name `module` imports (ours and foreign, top-level or in a function) -> line numbers
    kept as 'where' strings, for messages."""
    path = MODULES[module]
    found: dict[str, set[str]] = {}
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from training import prior` loads training.prior; `from x import Name`, module x.
            names = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                for alias in node.names
            ]
        for name in names:
            found.setdefault(name, set()).add(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


IMPORTS = {module: imports(module) for module in MODULES}
GRAPH = {
    module: {t for name in names if (t := _ours(name)) and t != module and t != GENERATED}
    for module, names in IMPORTS.items()
}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan 1972), each a circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
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

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(graph)))
    try:
        for node in sorted(graph):
            if node not in index:
                visit(node)
    finally:
        sys.setrecursionlimit(limit)
    return found


def test_the_reader_finds_modules_and_their_imports():
    assert {"server.options", "training.config", "training.train", "export.pipeline"} <= set(GRAPH)
    assert "training.config" in GRAPH["training.train"]
    # `from training import ..., learned_priors, ...`
    assert "training.learned_priors" in GRAPH["training.train"]
    assert "torch" in IMPORTS["training.train"]


def test_the_cycle_finder_finds_a_circle_and_passes_a_tree():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_no_module_imports_itself_round_a_circle():
    found = cycles(GRAPH)
    assert found == [], "import circles (lazy imports count): " + "; ".join(
        " -> ".join(c) for c in found
    )


def _where(module: str, prefixes: tuple[str, ...]) -> list[str]:
    return sorted(
        w
        for name, places in IMPORTS[module].items()
        if name.split(".")[0] in prefixes or name.startswith(tuple(p + "." for p in prefixes))
        for w in places
        if not name.startswith("server.options") or "server" not in prefixes
    )


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("server")))
def test_the_server_imports_no_torch_training_or_export(module):
    assert _where(module, ("torch", "torchvision", "training", "export")) == []


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("training")))
def test_training_imports_only_server_options_from_server_and_nothing_from_export(module):
    from_server = sorted(
        w
        for name, places in IMPORTS[module].items()
        if (name == "server" or name.startswith("server.")) and name != "server.options"
        for w in places
    )
    assert from_server == [] and _where(module, ("export",)) == []


def test_server_options_is_standard_library_only_at_import():
    tree = ast.parse(MODULES["server.options"].read_text(encoding="utf-8"))
    top_level = {
        name.split(".")[0]
        for node in tree.body
        for name in (
            [a.name for a in node.names] if isinstance(node, ast.Import)
            else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        )
    }  # fmt: skip
    assert top_level - {"__future__"} <= set(sys.stdlib_module_names), top_level
    # The one import outside the standard library runs inside `providers`, only for vae-serve and
    # vae-bench, and survives onnxruntime's absence (ImportError -> the names' form is checked).
    every = {name.split(".")[0] for name in IMPORTS["server.options"]}
    assert every - {"__future__"} - set(sys.stdlib_module_names) == {"onnxruntime"}


def test_client_imports_no_torch_training_or_export():
    offenders = [
        w
        for module in MODULES
        if module.startswith("client")
        for w in _where(module, ("torch", "torchvision", "training", "export"))
    ]
    assert offenders == []
