"""Layering of the code: ``tryon`` is the plain library, Prefect lives in ``flows``.

Read statically with :mod:`ast` (nothing is imported), so every import counts: module-level ones,
ones inside functions, ones under ``if TYPE_CHECKING:``, ``import x`` and ``from x import y``, and
relative imports resolved against the importing module.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "tryon"
FORBIDDEN = ("prefect", "flows")


@dataclass(frozen=True)
class Import:
    file: Path
    line: int
    module: str  # the module named by the statement, absolute
    names: tuple[str, ...]  # for ``from module import a, b``: ("a", "b"); for ``import module``: ()

    @property
    def where(self) -> str:
        return f"{self.file.relative_to(ROOT)}:{self.line}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def source_files() -> list[Path]:
    return sorted(p for p in (ROOT / PACKAGE).rglob("*.py") if "__pycache__" not in p.parts)


def imports_of(path: Path) -> Iterator[Import]:
    """Every import statement anywhere in ``path`` (``ast.walk`` visits nested blocks too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    me = module_name(path)
    # The package a relative import is relative to: a package's __init__ is its own package.
    package = me if is_package(path) else me.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(path, node.lineno, alias.name, ())
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                if node.level - 1 > len(base) - 1:
                    raise AssertionError(f"{path}:{node.lineno}: relative import beyond the top package")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            yield Import(path, node.lineno, module, tuple(a.name for a in node.names))


def all_imports() -> list[Import]:
    return [imp for path in source_files() for imp in imports_of(path)]


def test_the_files_are_found():
    files = source_files()
    assert files and ROOT / PACKAGE / "__init__.py" in files


def test_tryon_imports_neither_prefect_nor_flows():
    bad = [imp for imp in all_imports()
           if any(imp.module == top or imp.module.startswith(top + ".") for top in FORBIDDEN)]
    assert not bad, (f"{len(bad)} import(s) of {' or '.join(FORBIDDEN)} in {PACKAGE}/ (the library must not "
                     "depend on Prefect or on the flows):\n"
                     + "\n".join(f"  {imp.where}: {describe(imp)}" for imp in bad))


def describe(imp: Import) -> str:
    return f"from {imp.module} import {', '.join(imp.names)}" if imp.names else f"import {imp.module}"


# -- the graph of imports between tryon modules ---------------------------------------------------

def known_modules() -> dict[str, Path]:
    return {module_name(p): p for p in source_files()}


def targets(imp: Import, modules: dict[str, Path]) -> list[str]:
    """The tryon modules an import statement names: ``from tryon import images`` names tryon.images
    (if that is a module; else the package tryon itself)."""
    if not (imp.module == PACKAGE or imp.module.startswith(PACKAGE + ".")):
        return []
    found = []
    if imp.names:
        for name in imp.names:
            sub = f"{imp.module}.{name}"
            if sub in modules:
                found.append(sub)
            else:
                found.append(imp.module)
    else:
        found.append(imp.module)
    out = []
    for target in found:
        # ``import tryon.x.y`` where only tryon.x exists (should not happen): the nearest module.
        while target not in modules and "." in target:
            target = target.rpartition(".")[0]
        if target in modules and target not in out:
            out.append(target)
    return out


def is_ancestor(package: str, module: str) -> bool:
    return module.startswith(package + ".")


def import_graph() -> dict[str, dict[str, Import]]:
    """module -> {imported module: the first statement importing it}."""
    modules = known_modules()
    graph: dict[str, dict[str, Import]] = {name: {} for name in modules}
    for imp in all_imports():
        source = module_name(imp.file)
        for target in targets(imp, modules):
            if target == source:
                continue  # e.g. a package's __init__ doing ``from . import name`` of its own attribute
            if is_package(imp.file) and is_ancestor(source, target):
                continue  # a package's __init__ importing its own submodules is fine
            if is_ancestor(target, source):
                continue  # a module importing its parent package (e.g. tryon itself) is fine
            graph[source].setdefault(target, imp)
    return graph


def strongly_connected(graph: dict[str, dict[str, Import]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative): components with a cycle, i.e. >1 module or a self-import."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph[node]:
                    found.append(sorted(component))
    return found


def a_cycle(graph: dict[str, dict[str, Import]], component: list[str]) -> list[str]:
    """One concrete cycle through the component's first module (breadth-first: a shortest one)."""
    start, members = component[0], set(component)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for child in sorted(graph[node]):
                if child not in members:
                    continue
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if child not in previous:
                    previous[child] = node
                    nxt.append(child)
        frontier = nxt
    raise AssertionError(f"no cycle found in {component}")  # cannot happen for a strong component


def test_no_import_cycles_between_tryon_modules():
    graph = import_graph()
    assert any(graph.values()), "no imports between tryon modules found: is the walk broken?"
    cycles = []
    for component in strongly_connected(graph):
        cycle = a_cycle(graph, component)
        steps = "\n".join(f"      {a} -> {b}  ({graph[a][b].where}: {describe(graph[a][b])})"
                          for a, b in zip(cycle, cycle[1:]))
        cycles.append(f"  {' -> '.join(cycle)}\n    (modules in the cycle: {', '.join(component)})\n{steps}")
    assert not cycles, (f"{len(cycles)} import cycle(s) between {PACKAGE} modules (counting imports inside "
                        "functions and under TYPE_CHECKING):\n" + "\n".join(cycles))
