"""Draw per-cell localization maps and an HTML report from a prediction folder.

  python scripts/make_maps.py --pred preds/ --maps maps/ [--report report/] [--classes 0 Cytosol ...]
                              [--labels train.csv] [--truth DIR] [--no-tiff] [--h5ad]

For each image, --maps gets {id}/overview.png (composite, cells tinted by top location, labels, legend),
{id}/class_NN.png (cells painted by their probability for each predicted or requested class),
{id}/attention.png and the OME-TIFFs cells.ome.tif + probabilities.ome.tif at the original resolution
(see hpa_cells/maps/). --report writes a static HTML folder (open report/index.html; no server needed).
The cell cache is found through the prediction folder's manifest.json (--cache overrides it when it moved). The
fields are drawn from the pixels the cache stores (schema 2), so the input images are not needed; a schema-1 cache
stores none, and its input folder (recorded in the cache, or --images) is read instead: an image whose file is
missing is named on one line and in maps_index.csv, and the other images are drawn.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hpa_cells_cli.arguments import whole_number


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The command's options; `prog` names it in the usage line (default: the running file's name)."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pred", type=Path, required=True, help="prediction folder written by scripts/predict.py")
    p.add_argument("--maps", type=Path, help="output folder for the maps")
    p.add_argument("--report", type=Path, help="output folder for the HTML report")
    p.add_argument("--classes", nargs="+", default=[], metavar="CLASS",
                   help="also draw panels for these classes (ids or names) in every image (default: none)")
    p.add_argument("--labels", type=Path, help="image label file for F1 in the report (default: the cache's labels)")
    p.add_argument("--truth", type=Path, help="synthetic folder with per-cell truth: cell PR curves in the report")
    p.add_argument("--no-tiff", action="store_true", help="skip the OME-TIFF maps (the slow part for 2048 px fields)")
    p.add_argument("--h5ad", action="store_true",
                   help="also write {pred}/cells.h5ad (needs: pip install 'hpa-cells[anndata]')")
    p.add_argument("--cache", type=Path, help="cell cache, when it moved since prediction")
    p.add_argument("--images", type=Path,
                   help="input images folder, when it moved since segmentation (read only for a schema-1 cache, "
                        "which stores no pixels)")
    p.add_argument("--limit", type=whole_number(1), help="draw only the first N images")
    return p


def parse_args(argv: list[str] | None, prog: str | None = None) -> argparse.Namespace:
    """The options, refusing a run with nothing to do (argparse's usage error, exit code 2)."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.maps is None and args.report is None and not args.h5ad:
        parser.error("nothing to do: give --maps, --report and/or --h5ad")
    return args


def failure_lines(failures: dict[str, str], maps_dir: Path) -> list[str]:
    """The lines naming the images whose maps could not be drawn (empty when none)."""
    if not failures:
        return []
    return [f"  {len(failures)} images could not be drawn (kind 'error' in {maps_dir / 'maps_index.csv'}):",
            *(f"    {error}" for error in failures.values())]


def main(argv: list[str] | None = None, *, prog: str | None = None) -> int:
    """Run `maps` with `argv` (default: sys.argv[1:]); 0 on success, 2 for bad input, 3 for a missing extra."""
    args = parse_args(argv, prog)
    from hpa_cells.cache import CellCacheError
    from hpa_cells.cell_exports import ExportDependencyError, write_h5ad
    from hpa_cells.images import ImageReadError
    from hpa_cells.labels import LabelFileError
    from hpa_cells.maps import class_id_of
    from hpa_cells.predictions import PredictionFolderError
    from hpa_cells.report import TruthFolderError, write_maps_and_report

    try:
        classes = [class_id_of(text) for text in args.classes]
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    lines = []
    try:
        if args.maps is not None or args.report is not None:
            result = write_maps_and_report(args.pred, args.maps, args.report, classes, args.labels, args.truth,
                                           write_tiff=not args.no_tiff, cache_path=args.cache, images_dir=args.images,
                                           limit=args.limit, show_progress=True)
            n = len(result.maps)
            lines.append(f"Drew maps of {n} images in {result.seconds:.1f} s ({n / max(result.seconds, 1e-9):.2f} "
                         f"images/s) -> {result.maps_dir}")
            if result.report_index is not None:
                lines.append(f"  report: {result.report_index}  (open in a browser; no server needed)")
            lines += failure_lines(result.failures, result.maps_dir)
        if args.h5ad:
            lines.append(f"  h5ad:   {write_h5ad(args.pred)}")
    except ExportDependencyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    except (PredictionFolderError, CellCacheError, ImageReadError, LabelFileError,
            TruthFolderError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0
