"""Architecture rules of the library packages (`hpa_cells`, `segmentation`, `mil`, `hpa_cells_cli`).

Fast and import-free: files are parsed with `ast` (see `tests/architecture_rules.py` for the exact
rules). A cycle counts imports anywhere in a file (inside functions too) except under
`if TYPE_CHECKING:`, which never executes; the layer rule counts those as well. The second half tests
the checker itself on tiny fake package trees, so these tests can really fail.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from architecture_rules import (
    FORBIDDEN_IMPORTS,
    LIBRARY_PACKAGES,
    MAX_FILE_LINES,
    MAX_FUNCTION_LINES,
    find_cycles,
    find_layer_violations,
    find_long_files,
    find_long_functions,
    library_modules,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def _report(title: str, problems: list[str]) -> str:
    return f"{len(problems)} {title}:\n  " + "\n  ".join(problems)


def test_library_packages_are_found() -> None:
    modules = library_modules(REPO_ROOT)
    for package in ("hpa_cells", "segmentation", "mil"):  # hpa_cells_cli may not exist yet
        assert package in modules, f"library package {package} not found under {REPO_ROOT}"


def test_no_import_cycles() -> None:
    problems = find_cycles(REPO_ROOT)
    assert not problems, _report("file-level import cycle(s) among library modules", problems)


def test_imports_follow_the_layers() -> None:
    problems = find_layer_violations(REPO_ROOT)
    rules = "; ".join(
        f"{package} must not import {sorted(bad)}" for package, bad in FORBIDDEN_IMPORTS.items() if bad
    )
    assert not problems, _report(f"import(s) against the layers ({rules})", problems)


def test_no_library_file_is_too_long() -> None:
    problems = find_long_files(REPO_ROOT)
    assert not problems, _report(f"library file(s) over {MAX_FILE_LINES} lines", problems)


def test_no_library_function_is_too_long_without_a_reason() -> None:
    problems = find_long_functions(REPO_ROOT)
    assert not problems, _report(
        f'library function(s) over {MAX_FUNCTION_LINES} lines without "Long because ..." in the docstring',
        problems,
    )


# --------------------------------------------------------------------------------------------------
# The checker itself, on fake package trees
# --------------------------------------------------------------------------------------------------


def _write_tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return root


def test_checker_finds_a_cycle_hidden_in_a_function(tmp_path: Path) -> None:
    root = _write_tree(
        tmp_path,
        {
            "hpa_cells/__init__.py": "",
            "hpa_cells/a.py": "from hpa_cells import b\n",
            "hpa_cells/b.py": "def late():\n    from . import a\n    return a\n",
        },
    )
    problems = find_cycles(root)
    assert len(problems) == 1
    assert "hpa_cells.a -> hpa_cells.b (hpa_cells/a.py:1)" in problems[0]
    assert "hpa_cells.b -> hpa_cells.a (hpa_cells/b.py:2)" in problems[0]


def test_checker_finds_a_cycle_through_a_package_init(tmp_path: Path) -> None:
    root = _write_tree(
        tmp_path,
        {
            "mil/__init__.py": "from mil.sub.x import X\n",
            "mil/sub/__init__.py": "",
            "mil/sub/x.py": "import importlib\nX = 1\ndef f():\n    return importlib.import_module('mil')\n",
        },
    )
    problems = find_cycles(root)
    assert len(problems) == 1 and "mil.sub.x -> mil (mil/sub/x.py:4)" in problems[0]


def test_checker_resolves_relative_parent_imports(tmp_path: Path) -> None:
    root = _write_tree(
        tmp_path,
        {
            "hpa_cells/__init__.py": "",
            "hpa_cells/p/__init__.py": "",
            "hpa_cells/p/one.py": "from ..q.two import T\n",
            "hpa_cells/q/__init__.py": "",
            "hpa_cells/q/two.py": "from hpa_cells.p import one\nT = 2\n",
        },
    )
    problems = find_cycles(root)
    assert len(problems) == 1 and "hpa_cells.p.one -> hpa_cells.q.two" in problems[0]


def test_checker_ignores_type_checking_imports_for_cycles(tmp_path: Path) -> None:
    root = _write_tree(
        tmp_path,
        {
            "hpa_cells/__init__.py": "",
            "hpa_cells/a.py": "from hpa_cells.b import B\n",
            "hpa_cells/b.py": (
                "from typing import TYPE_CHECKING\nimport typing\n"
                "if TYPE_CHECKING:\n    from hpa_cells.a import A\n"
                "if typing.TYPE_CHECKING:\n    import hpa_cells.a\n"
                "B = 1\n"
            ),
        },
    )
    assert find_cycles(root) == []


def test_checker_finds_upward_and_sideways_imports(tmp_path: Path) -> None:
    root = _write_tree(
        tmp_path,
        {
            "hpa_cells/__init__.py": "",
            "hpa_cells/metrics.py": "def f():\n    from segmentation.instance_metrics import match\n",
            "hpa_cells/ok.py": "import numpy\nfrom hpa_cells import metrics\n",
            "segmentation/__init__.py": "import hpa_cells.metrics\n",
            "mil/__init__.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import segmentation\n",
            "mil/cli_use.py": "import hpa_cells_cli.main\n",
            "hpa_cells_cli/__init__.py": "import mil, segmentation, hpa_cells\n",
        },
    )
    problems = find_layer_violations(root)
    assert problems == [
        "hpa_cells/metrics.py:2: hpa_cells.metrics imports segmentation.instance_metrics",
        "mil/__init__.py:3: mil imports segmentation (inside if TYPE_CHECKING)",
        "mil/cli_use.py:1: mil.cli_use imports hpa_cells_cli.main",
    ]


def test_checker_handles_an_absent_package(tmp_path: Path) -> None:
    root = _write_tree(tmp_path, {"hpa_cells/__init__.py": "", "mil/__init__.py": ""})
    assert set(library_modules(root)) == {"hpa_cells", "mil"}
    assert "hpa_cells_cli" in LIBRARY_PACKAGES
    assert find_cycles(root) == [] and find_layer_violations(root) == [] and find_long_files(root) == []


def test_checker_finds_a_long_file(tmp_path: Path) -> None:
    root = _write_tree(
        tmp_path,
        {
            "hpa_cells/__init__.py": "",
            "hpa_cells/ok.py": "x = 1\n" * MAX_FILE_LINES,
            "hpa_cells/big.py": "x = 1\n" * (MAX_FILE_LINES + 1),
        },
    )
    assert find_long_files(root) == [f"hpa_cells/big.py: {MAX_FILE_LINES + 1} lines (limit {MAX_FILE_LINES})"]


def _function(name: str, total_lines: int, docstring: str | None = None, indent: str = "") -> str:
    """Source of a function `total_lines` long from its `def` line to its last line."""
    lines = [f"{indent}def {name}():"]
    if docstring is not None:
        lines.append(f'{indent}    """{docstring}"""')
    while len(lines) < total_lines:
        lines.append(f"{indent}    x = {len(lines)}")
    return "\n".join(lines) + "\n"


def test_checker_finds_a_long_function_without_a_reason(tmp_path: Path) -> None:
    limit = MAX_FUNCTION_LINES
    root = _write_tree(
        tmp_path,
        {
            "hpa_cells/__init__.py": "",
            "hpa_cells/funcs.py": (
                _function("just_fits", limit)
                + _function("too_long", limit + 1, "Does things.")
                + _function("explained", limit + 1, "Does things.\n\n    Long because it is one table.")
                + "class K:\n"
                + "    @staticmethod\n"
                + _function("method", limit + 1, indent="    ")
            ),
        },
    )
    problems = find_long_functions(root)
    assert len(problems) == 2, problems
    assert problems[0].startswith(f"hpa_cells/funcs.py:{limit + 1} too_long: {limit + 1} lines")
    assert " method: " in problems[1]
