"""`hpa-cells COMMAND [options]`: one console command with a subcommand per script.

The command modules are imported only when chosen (their own heavy imports wait until their options are
parsed), so `hpa-cells --help` and `hpa-cells COMMAND --help` are instant. Each subcommand takes exactly
the options, defaults and exit codes of its `scripts/NAME.py` wrapper.
"""

from __future__ import annotations

import argparse
import importlib
import sys

PROG = "hpa-cells"

COMMANDS: dict[str, tuple[str, str]] = {
    "segment": ("segment", "segment fields into cells and cache every cell's crop in one HDF5 file"),
    "relabel": ("relabel", "replace the image labels stored in a cell cache by a label file's (no re-segmenting)"),
    "merge-caches": ("merge_caches", "merge shard caches (segment --shard I/N job arrays) into one cell cache"),
    "train": ("train", "train a MIL model (crop or dense family) on a cell cache from image labels"),
    "predict": ("predict", "predict image labels and per-cell localization with a model or an ensemble"),
    "evaluate": ("evaluate", "score a prediction folder: image macro F1, per-class F1, cell-level mAP"),
    "maps": ("maps", "draw per-cell localization maps and an HTML report from a prediction folder"),
    "demo": ("demo", "the end-to-end demo on built-in synthetic data (no downloads)"),
    "make-synthetic": ("make_synthetic", "generate a synthetic HPA-like dataset with per-cell ground truth"),
    "train-segmenter": ("train_segmenter", "train the bundled Cellpose models (cells, nuclei)"),
}
"""Subcommand -> (module in hpa_cells_cli, one-line description for `hpa-cells --help`)."""


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser: only for `--help` and for errors; a known subcommand is dispatched before it."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Weakly supervised, cell-level protein localization in Human Protein Atlas confocal images.",
        epilog=f"Run '{PROG} COMMAND --help' for a command's options. Each command is also a script: "
               "python scripts/NAME.py (maps = scripts/make_maps.py).",
    )
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND", required=True)
    for name, (_, description) in COMMANDS.items():
        commands.add_parser(name, help=description, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Dispatch `argv` (default: sys.argv[1:]) to the chosen command's `main`; return its exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        build_parser().parse_args(argv)  # --help exits 0; no or an unknown command exits 2 with the usage
        return 2  # not reached: every argv that gets here is --help or an error
    module = importlib.import_module(f"hpa_cells_cli.{COMMANDS[argv[0]][0]}")
    return module.main(argv[1:], prog=f"{PROG} {argv[0]}")
