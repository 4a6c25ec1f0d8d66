"""Predict image labels and per-cell localization with a trained MIL model (crop or dense), or an ensemble.

  python scripts/predict.py --model runs/NAME --cache cells.h5 --out preds/
  python scripts/predict.py --model runs/crop --model runs/dense --cache cells.h5 --out preds/   # ensemble

Writes submission.csv (Kaggle Id,Predicted), images.csv, cells.csv (+ cells.parquet), attention.h5 and
manifest.json into --out, plus pixel_probabilities.h5 when a model is dense (see hpa_cells/predictions/writer.py and
data/README.md). A cell's class probability is, by default, sqrt(its own probability x its image's) (--cell-score
gated; --cell-score cell keeps the cell's own). With several --model folders the predictions are an ensemble: the mean of the members' image and
per-cell probabilities, thresholds = the mean of the members' thresholds (mil/ensemble.py).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The command's options; `prog` names it in the usage line (default: the running file's name)."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, action="extend", nargs="+",
                   help="model folder written by scripts/train.py; several (or --model repeated) = an ensemble")
    p.add_argument("--cache", type=Path, required=True, help="HDF5 cell cache written by scripts/segment.py")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="(default: %(default)s)")
    p.add_argument("--cell-score", choices=("gated", "cell"), default="gated",
                   help="what cells.csv's class probabilities are: gated = sqrt(cell probability x image probability), "
                        "which ranks cells across images better; cell = the cell's own probability (default: %(default)s)")
    p.add_argument("--maps", type=Path, help="also draw per-cell localization maps here (see scripts/make_maps.py)")
    p.add_argument("--report", type=Path, help="also write a static HTML report here")
    p.add_argument("--map-classes", nargs="+", default=[], metavar="CLASS",
                   help="extra classes (ids or names) to draw panels for in every image (default: none)")
    return p


def main(argv: list[str] | None = None, *, prog: str | None = None) -> int:
    """Run `predict` with `argv` (default: sys.argv[1:]); 0 on success, 2 for bad input."""
    args = build_parser(prog).parse_args(argv)
    from hpa_cells.cache import CellCache, CellCacheSchemaError
    from hpa_cells.classes import CLASS_NAMES
    from hpa_cells.predictions import write_prediction_folder
    from mil.ensemble import predict_members
    from mil.model_folder import ModelFolderError, load_model

    try:
        from hpa_cells.maps import class_id_of

        map_classes = [class_id_of(c) for c in args.map_classes]
    except ValueError as err:
        print(f"error: --map-classes: {err}", file=sys.stderr)
        return 2
    started = time.time()
    try:
        members = [load_model(folder, device=args.device) for folder in args.model]
    except ModelFolderError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not args.cache.is_file():
        print(f"error: cell cache not found: {args.cache}", file=sys.stderr)
        return 2
    try:
        predictions, manifest = predict_members(members, args.cache, args.out, args.batch_size, args.device,
                                                cell_score=args.cell_score)
    except CellCacheSchemaError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    with CellCache(args.cache) as cache:
        flag_names = cache.qc_flag_names
    paths = write_prediction_folder(predictions, args.out, manifest, flag_names)
    seconds = time.time() - started
    labels = predictions.predicted_labels()
    counts = {}
    for ids in labels.values():
        for c in ids:
            counts[c] = counts.get(c, 0) + 1
    kind = f"an ensemble of {len(members)} models" if len(members) > 1 else f"a {members[0].config.family} model"
    print(f"\nPredicted {len(predictions.image_ids)} images, {len(predictions.cells)} cells with {kind} in "
          f"{seconds:.1f} s ({len(predictions.image_ids) / seconds:.1f} images/s) -> {args.out}")
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:8]
    print("  most predicted: " + (", ".join(f"{CLASS_NAMES[c]} {n}" for c, n in top) or "none"))
    for name, path in paths.items():
        print(f"  {name:14s} {path}")
    if args.maps is not None or args.report is not None:
        from hpa_cells.report import write_maps_and_report

        drawn = write_maps_and_report(args.out, args.maps, args.report, map_classes)
        print(f"  {'maps':14s} {drawn.maps_dir} ({len(drawn.maps)} images, {drawn.seconds:.1f} s)")
        if drawn.report_index is not None:
            print(f"  {'report':14s} {drawn.report_index}")
    return 0
