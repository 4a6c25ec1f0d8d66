"""Generate a synthetic HPA-like dataset with per-cell ground truth.

Writes `{id}_{red,green,blue,yellow}.png`, `train.csv` (Id,Target), `{id}_cells.png` / `{id}_nuclei.png`
(16-bit instance masks), `cells.csv` (per-cell labels) and `synthetic.json` into OUT. Image i depends
only on (seed, i): rerunning into the same folder resumes, skipping complete images.

Example: python scripts/make_synthetic.py --n 200 --out data/synthetic --seed 0 --balanced --workers 2
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from hpa_cells.classes import NUM_CLASSES
from hpa_cells_cli.arguments import finite_number, whole_number


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The command's options; `prog` names it in the usage line (default: the running file's name)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--n", type=whole_number(1), default=200, help="number of images")
    parser.add_argument(
        "--out", type=Path, required=True, help="output folder (new, empty, or an earlier run to resume)"
    )
    parser.add_argument("--seed", type=whole_number(0), default=0,
                        help="random seed; image i depends only on (seed, i)")
    parser.add_argument(
        "--balanced",
        action="store_true",
        help="reweight the real 2018 label sets so every class is in at least --min-prevalence of the images",
    )
    parser.add_argument("--min-prevalence", type=finite_number(above=0.0, at_most=1 / NUM_CLASSES), default=0.03,
                        help=f"class floor used by --balanced, in (0, 1/{NUM_CLASSES}]")
    parser.add_argument("--size", type=whole_number(64), default=512,
                        help="image side in px, >= 64 (cell sizes scale with it)")
    parser.add_argument(
        "--preset",
        default="default",
        help="appearance preset: default, or hpa2018 (cells, intensities and background tuned toward the real "
        "2018 competition fields; see BENCHMARKS.md 'Synthetic realism')",
    )
    parser.add_argument("--workers", type=whole_number(1), default=1, help="generator processes")
    parser.add_argument(
        "--contact-sheet",
        type=Path,
        default=None,
        help="also write a PNG with one example cell per class here",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None, *, prog: str | None = None) -> int:
    """Run `make-synthetic` with `argv` (default: sys.argv[1:]); 0 on success, 1 for an unusable output
    folder, 2 for bad input."""
    args = build_parser(prog).parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from hpa_cells.classes import CLASS_NAMES
    from hpa_cells.synthetic import OutputFolderError, SyntheticConfig, make_contact_sheet, write_dataset

    try:
        config = SyntheticConfig.preset(
            args.preset, seed=args.seed, size=args.size, balanced=args.balanced, min_prevalence=args.min_prevalence
        )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        summary = write_dataset(args.out, args.n, config, workers=args.workers, show_progress=not args.quiet)
    except OutputFolderError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1

    print(f"synthetic dataset in {summary.out_dir}")
    print(
        f"  images: {summary.n_images} ({summary.n_written} written, {summary.n_skipped} already complete), "
        f"size {config.size} px, seed {config.seed}, {'balanced' if config.balanced else 'real'} label sets"
        + ("" if config.appearance.is_neutral else f", preset {config.preset_name}")
    )
    print(
        f"  cells: {summary.n_cells} ({summary.n_cells / summary.n_images:.1f} per image, {summary.n_dividing} dividing)"
    )
    print(
        f"  time: {summary.seconds:.1f} s, {summary.images_per_second:.2f} images/s written "
        f"with {summary.workers} worker{'s' if summary.workers > 1 else ''}"
    )
    print("  label prevalence (share of images; cells carrying it):")
    for class_id, name in enumerate(CLASS_NAMES):
        print(
            f"    {class_id:2d} {name:<30s} {summary.prevalence[class_id]:6.1%}  {summary.cell_counts[class_id]:6d}"
        )
    if args.contact_sheet is not None:
        path = make_contact_sheet(args.contact_sheet, seed=config.seed, size=config.size)
        print(f"  contact sheet: {path}")
    return 0
