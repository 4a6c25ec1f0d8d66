"""Predict image labels and per-cell localization with a trained MIL model.

  python scripts/predict.py --model runs/NAME --cache cells.h5 --out preds/

Writes submission.csv (Kaggle Id,Predicted), images.csv, cells.csv (+ cells.parquet), attention.h5 and
manifest.json into --out (see mil/prediction_files.py and data/README.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="model folder written by scripts/train.py")
    p.add_argument("--cache", type=Path, required=True, help="HDF5 cell cache written by scripts/segment.py")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="(default: %(default)s)")
    p.add_argument("--maps", type=Path, help="also draw per-cell localization maps here (see scripts/make_maps.py)")
    p.add_argument("--report", type=Path, help="also write a static HTML report here")
    p.add_argument("--map-classes", nargs="+", default=[], metavar="CLASS",
                   help="extra classes (ids or names) to draw panels for in every image (default: none)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from hpa_cells.cell_cache import CellCache
    from hpa_cells.classes import CLASS_NAMES
    from mil.inference import predict_cache
    from mil.model_folder import ModelFolderError, load_model
    from mil.prediction_files import write_prediction_files

    try:
        from hpa_cells.maps import class_id_of

        map_classes = [class_id_of(c) for c in args.map_classes]
    except ValueError as err:
        print(f"error: --map-classes: {err}", file=sys.stderr)
        return 2
    started = time.time()
    try:
        loaded = load_model(args.model, device=args.device)
    except ModelFolderError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not args.cache.is_file():
        print(f"error: cell cache not found: {args.cache}", file=sys.stderr)
        return 2
    predictions = predict_cache(loaded, args.cache, args.batch_size, args.device)
    with CellCache(args.cache) as cache:
        flag_names = cache.qc_flag_names
    paths = write_prediction_files(predictions, args.out,
                                   {"model": str(args.model.resolve()), "cache": str(args.cache.resolve())}, flag_names)
    seconds = time.time() - started
    labels = predictions.predicted_labels()
    counts = {}
    for ids in labels.values():
        for c in ids:
            counts[c] = counts.get(c, 0) + 1
    print(f"\nPredicted {len(predictions.image_ids)} images, {len(predictions.cells)} cells in {seconds:.1f} s "
          f"({len(predictions.image_ids) / seconds:.1f} images/s) -> {args.out}")
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


if __name__ == "__main__":
    sys.exit(main())
