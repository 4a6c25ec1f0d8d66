"""Static architecture rules for the library packages, read with `ast` (nothing is imported).

Used by `tests/test_architecture.py`; kept out of the library on purpose (it checks the library).

Rules (each is one test in `test_architecture.py`):

1. **No file-level import cycle** among library modules. Every `import` / `from ... import` statement in a
   file counts, wherever it stands (module level, inside functions or methods, inside `try`), and so does
   `importlib.import_module("constant.name")`. Imports inside the body of `if TYPE_CHECKING:` (or
   `if typing.TYPE_CHECKING:`) do NOT count for cycles: they never execute. Relative imports are resolved
   against the importing file's package. `from pkg import name` is an edge to `pkg.name` when that is a
   module of the tree, else to `pkg` (its `__init__.py`); an import of a package is an edge to its
   `__init__.py`. Parent packages that Python initialises on the way (`a` for `import a.b`) are not
   counted as edges, otherwise every package `__init__` that re-exports its submodules would be a cycle.
2. **Layers**: `hpa_cells` imports none of `segmentation`, `mil`, `hpa_cells_cli`; `segmentation` and
   `mil` import neither each other nor `hpa_cells_cli`; `hpa_cells_napari` (the napari plugin, a top layer
   like `hpa_cells_cli`) is imported by none of them, and none of them imports napari or Qt (`qtpy`). Here `TYPE_CHECKING` imports DO count: a type
   named from an upper layer still ties the lower layer to it.
3. **No library file over 600 lines** (`len(text.splitlines())`).
4. **No library function over 60 lines** (`def` / `async def`, methods and nested functions included;
   from the `def` line to `end_lineno`, decorators not counted) unless its docstring contains
   "Long because".
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

LIBRARY_PACKAGES: tuple[str, ...] = ("hpa_cells", "segmentation", "mil", "hpa_cells_cli", "hpa_cells_napari")

FORBIDDEN_IMPORTS: Mapping[str, frozenset[str]] = {
    "hpa_cells": frozenset({"segmentation", "mil", "hpa_cells_cli", "hpa_cells_napari", "napari", "qtpy"}),
    "segmentation": frozenset({"mil", "hpa_cells_cli", "hpa_cells_napari", "napari", "qtpy"}),
    "mil": frozenset({"segmentation", "hpa_cells_cli", "hpa_cells_napari", "napari", "qtpy"}),
    "hpa_cells_cli": frozenset({"hpa_cells_napari", "napari", "qtpy"}),
    "hpa_cells_napari": frozenset(),
}
"""Top-level library package -> top-level packages it must not import."""

MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 60
LONG_REASON = "Long because"


@dataclass(frozen=True)
class ImportEdge:
    """One import statement: `source` module imports `target` (a dotted name, maybe outside the tree)."""

    source: str
    target: str
    path: Path
    line: int
    type_checking_only: bool

    def where(self, root: Path) -> str:
        return f"{_relative(self.path, root)}:{self.line}"


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def library_modules(root: Path, packages: Iterable[str] = LIBRARY_PACKAGES) -> dict[str, Path]:
    """Dotted module name -> file, for every `.py` file under each package that exists under `root`.

    A package's `__init__.py` is named by the package (`hpa_cells.cache`); absent packages are skipped.
    """
    modules: dict[str, Path] = {}
    for package in packages:
        folder = root / package
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _walk_imports(node: ast.AST, type_checking: bool = False) -> Iterator[tuple[ast.AST, bool]]:
    """Every import statement / import_module call below `node`, with "inside `if TYPE_CHECKING:`"."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for statement in child.body:
                yield from _walk_imports_in(statement, True)
            for statement in child.orelse:
                yield from _walk_imports_in(statement, type_checking)
            continue
        yield from _walk_imports_in(child, type_checking)


def _walk_imports_in(node: ast.AST, type_checking: bool) -> Iterator[tuple[ast.AST, bool]]:
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node, type_checking
    elif isinstance(node, ast.Call) and _import_module_name(node) is not None:
        yield node, type_checking
    yield from _walk_imports(node, type_checking)


def _import_module_name(call: ast.Call) -> str | None:
    """The constant absolute name of `importlib.import_module("x.y")` / `import_module("x.y")`, else None."""
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    if name != "import_module" or not call.args:
        return None
    first = call.args[0]
    if isinstance(first, ast.Constant) and isinstance(first.value, str) and not first.value.startswith("."):
        return first.value
    return None


def _package_of(module: str, path: Path) -> str:
    """The package a module's relative imports resolve against."""
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def _resolve_relative(module: str, path: Path, level: int, name: str | None) -> str:
    base = _package_of(module, path).split(".")
    if level > 1:
        base = base[: len(base) - (level - 1)]
    parts = [*base, name] if name else base
    return ".".join(p for p in parts if p)


def file_imports(module: str, path: Path, modules: Mapping[str, Path]) -> list[ImportEdge]:
    """All imports made by one file, as edges to dotted names (resolved for relative / `from` forms)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    edges: list[ImportEdge] = []
    for node, type_checking in _walk_imports(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = (
                _resolve_relative(module, path, node.level, node.module) if node.level else node.module or ""
            )
            for alias in node.names:
                candidate = f"{base}.{alias.name}" if base else alias.name
                targets.append(candidate if candidate in modules else base)
        else:
            assert isinstance(node, ast.Call)
            targets = [_import_module_name(node) or ""]
        for target in targets:
            if target:
                edges.append(ImportEdge(module, target, path, node.lineno, type_checking))
    return edges


def import_edges(root: Path, packages: Iterable[str] = LIBRARY_PACKAGES) -> list[ImportEdge]:
    """Every import edge of every library file under `root`."""
    modules = library_modules(root, packages)
    edges: list[ImportEdge] = []
    for module, path in modules.items():
        edges.extend(file_imports(module, path, modules))
    return edges


def _tree_module(target: str, modules: Mapping[str, Path]) -> str | None:
    """The library module an import target runs: itself, else its longest existing parent, else None."""
    parts = target.split(".")
    while parts:
        name = ".".join(parts)
        if name in modules:
            return name
        parts.pop()
    return None


def import_graph(root: Path, packages: Iterable[str] = LIBRARY_PACKAGES) -> dict[str, dict[str, ImportEdge]]:
    """module -> {imported library module -> first edge}, without `TYPE_CHECKING` imports and self-edges."""
    packages = tuple(packages)
    modules = library_modules(root, packages)
    graph: dict[str, dict[str, ImportEdge]] = {module: {} for module in modules}
    for edge in import_edges(root, packages):
        if edge.type_checking_only:
            continue
        target = _tree_module(edge.target, modules)
        if target is None or target == edge.source:
            continue
        graph[edge.source].setdefault(target, edge)
    return graph


def _strongly_connected(graph: Mapping[str, Mapping[str, object]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative), each sorted; singletons included."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
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
                components.append(sorted(component))
    return components


def _shortest_cycle(graph: Mapping[str, Mapping[str, object]], start: str, within: set[str]) -> list[str]:
    """A shortest path start -> ... -> start inside one component (breadth first)."""
    previous: dict[str, str] = {}
    frontier = [start]
    seen = {start}
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node]):
                if child not in within:
                    continue
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if child not in seen:
                    seen.add(child)
                    previous[child] = node
                    following.append(child)
        frontier = following
    return [start]


def find_cycles(root: Path, packages: Iterable[str] = LIBRARY_PACKAGES) -> list[str]:
    """One message per import cycle (strongly connected group of modules): an example loop with file:line."""
    graph = import_graph(root, packages)
    problems = []
    for component in _strongly_connected(graph):
        if len(component) < 2:
            continue
        loop = _shortest_cycle(graph, component[0], set(component))
        steps = [f"{a} -> {b} ({graph[a][b].where(root)})" for a, b in zip(loop, loop[1:], strict=False)]
        problems.append(f"cycle among {len(component)} modules {component}: " + "; ".join(steps))
    return problems


def find_layer_violations(
    root: Path,
    packages: Iterable[str] = LIBRARY_PACKAGES,
    forbidden: Mapping[str, frozenset[str]] = FORBIDDEN_IMPORTS,
) -> list[str]:
    """One message per import that runs against the layers (`TYPE_CHECKING` imports included)."""
    problems = []
    for edge in import_edges(root, packages):
        source_top = edge.source.split(".")[0]
        target_top = edge.target.split(".")[0]
        if target_top in forbidden.get(source_top, frozenset()):
            note = " (inside if TYPE_CHECKING)" if edge.type_checking_only else ""
            message = f"{edge.where(root)}: {edge.source} imports {edge.target}{note}"
            problems.append((_relative(edge.path, root), edge.line, message))
    return [message for *_, message in sorted(problems)]


def find_long_files(
    root: Path, packages: Iterable[str] = LIBRARY_PACKAGES, limit: int = MAX_FILE_LINES
) -> list[str]:
    """One message per library file over `limit` lines."""
    problems = []
    for path in library_modules(root, packages).values():
        count = len(path.read_text(encoding="utf-8").splitlines())
        if count > limit:
            problems.append(f"{_relative(path, root)}: {count} lines (limit {limit})")
    return sorted(problems)


def find_long_functions(
    root: Path, packages: Iterable[str] = LIBRARY_PACKAGES, limit: int = MAX_FUNCTION_LINES
) -> list[str]:
    """One message per function over `limit` lines whose docstring does not say "Long because"."""
    problems = []
    for path in library_modules(root, packages).values():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length <= limit:
                continue
            if LONG_REASON in (ast.get_docstring(node) or ""):
                continue
            message = (
                f"{_relative(path, root)}:{node.lineno} {node.name}: {length} lines (limit {limit}, "
                f'no "{LONG_REASON} ..." in its docstring)'
            )
            problems.append((_relative(path, root), node.lineno, message))
    return [message for *_, message in sorted(problems)]
