"""The `hpa-cells` console command (hpa_cells_cli.main): every subcommand listed in --help, lazy dispatch to
the command modules, and the scripts/*.py wrappers that are the documented entry points."""

from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hpa_cells_cli import main as cli

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "cellpose", "cv2", "h5py", "numpy", "hpa_cells", "segmentation", "mil")
SCRIPT_OF = {"maps": "make_maps"}
"""Command module -> its scripts/ wrapper, where the names differ."""


def imported_modules(importtime_stderr: str) -> set[str]:
    """The top-level names of the modules a `python -X importtime` run imported, from its stderr."""
    return {line.rsplit("|", 1)[1].strip().split(".")[0]
            for line in importtime_stderr.splitlines() if line.startswith("import time:") and "|" in line}


def test_python_m_help_lists_every_subcommand_and_imports_nothing_heavy(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "hpa_cells_cli", "--help"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: hpa-cells ")
    listed = done.stdout.split()
    for name in ("segment", "train", "predict", "evaluate", "maps", "demo", "make-synthetic", "train-segmenter"):
        assert name in listed, name
    for _, description in cli.COMMANDS.values():
        assert " ".join(description.split()[:3]) in " ".join(listed)
    modules = imported_modules(done.stderr)
    assert "hpa_cells_cli" in modules
    assert sorted(set(HEAVY) & modules) == []
    assert not any(f"hpa_cells_cli.{module}" in done.stderr for module, _ in cli.COMMANDS.values())  # lazy


def test_main_dispatches_segment_help_to_the_segment_parser(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        cli.main(["segment", "--help"])
    assert stop.value.code == 0
    printed = capsys.readouterr().out
    assert printed.startswith("usage: hpa-cells segment [-h] [--images IMAGES]")
    assert "--segmenter {cellpose,watershed,masks,whole-field}" in printed
    assert "Segment HPA fields into cells and cache every cell's four-channel crop in one HDF5 file." in printed


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_every_subcommand_reaches_its_parser(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    module = importlib.import_module(f"hpa_cells_cli.{cli.COMMANDS[name][0]}")
    with pytest.raises(SystemExit) as stop:
        cli.main([name, "--help"])
    assert stop.value.code == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"usage: hpa-cells {name} ")
    assert printed.split("\n", 1)[1] == module.build_parser(f"hpa-cells {name}").format_help().split("\n", 1)[1]


def test_no_or_an_unknown_subcommand_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in ([], ["segmnt"], ["--images", "x"]):
        with pytest.raises(SystemExit) as stop:
            cli.main(argv)
        assert stop.value.code == 2, argv
        assert capsys.readouterr().err.startswith("usage: hpa-cells "), argv


def test_subcommand_errors_keep_the_command_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        cli.main(["segment", "--segmenter", "stardist"])
    assert stop.value.code == 2
    assert "hpa-cells segment: error: argument --segmenter: invalid choice: 'stardist'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        cli.main(["maps", "--pred", "p"])
    assert stop.value.code == 2
    assert "nothing to do: give --maps, --report and/or --h5ad" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        cli.main(["make-synthetic", "--n", "0", "--out", "unused"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == ("hpa-cells make-synthetic: error: argument --n: must be a "
                                                        "whole number >= 1, got '0'")


@pytest.mark.parametrize("module", sorted({module for module, _ in cli.COMMANDS.values()}))
def test_each_script_is_a_thin_wrapper_of_its_command_module(module: str) -> None:
    script = REPO / "scripts" / f"{SCRIPT_OF.get(module, module)}.py"
    tree = ast.parse(script.read_text())
    imports = [node for node in tree.body if isinstance(node, ast.ImportFrom)]
    assert [(node.module, [alias.name for alias in node.names]) for node in imports] == [
        (f"hpa_cells_cli.{module}", ["main"])]
    assert len(tree.body) == 3  # docstring, the import, the __main__ guard
    assert sorted(p.stem for p in (REPO / "scripts").glob("*.py")) == sorted(
        SCRIPT_OF.get(m, m) for m, _ in cli.COMMANDS.values())
