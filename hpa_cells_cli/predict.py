"""Predict image labels and per-cell localization with a trained MIL model (crop or dense), or an ensemble.

  python scripts/predict.py --images DIR --out OUT --maps OUT/maps    # fields in, maps out: nothing else needed
  python scripts/predict.py --model runs/NAME --cache cells.h5 --out preds/
  python scripts/predict.py --model runs/crop --model runs/dense --cache cells.h5 --out preds/   # ensemble

Give exactly one of --cache (cells segmented already by scripts/segment.py) or --images (a folder of fields in any
layout segment.py reads: they are first segmented with segment.py's defaults, working size auto, into OUT/cells.h5;
that cache is kept, so rerunning the command resumes the segmentation and a later run can use --cache OUT/cells.h5).
--model bundled, the default, is the model that ships with the package (mil/models/bundled/); any folder written by
scripts/train.py can be given instead.

The cache must be made like the model's training cache: whole fields vs cells, and for crop models the crop size
(refused otherwise, naming both; model folders that do not record it get a warning). submission.csv holds every
test id: the cache's skipped fields (and images without cells) get an empty prediction, and their count is printed.

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

from hpa_cells.devices import DEVICE_CHOICES_TEXT
from hpa_cells_cli.arguments import whole_number

BUNDLED = "bundled"
BUNDLED_MODEL_DIR = Path(__file__).resolve().parents[1] / "mil" / "models" / "bundled"
"""Where `--model bundled` points: the model folder shipped as package data of `mil`."""
IMAGES_CACHE_NAME = "cells.h5"
"""With --images, the cells are cached in OUT/cells.h5 (kept: a rerun resumes)."""
ONE_INPUT_ERROR = ("give exactly one of --cache FILE (cells segmented already by scripts/segment.py) or --images DIR "
                   "(fields to segment first)")


class BundledModelMissing(FileNotFoundError):
    """`--model bundled` was asked for but this installation has no (complete) bundled model."""


def resolve_model_folders(values: list[Path] | None) -> list[Path]:
    """The --model values as folders: none given or 'bundled' -> `BUNDLED_MODEL_DIR`, which must hold a complete
    model folder and its MODEL_CARD.md, else `BundledModelMissing` says so and how to pass a folder."""
    from mil.model_files import REQUIRED_FILES

    folders = []
    for value in values or [Path(BUNDLED)]:
        if str(value) != BUNDLED:
            folders.append(value)
            continue
        if BUNDLED_MODEL_DIR.is_dir():
            missing = [name for name in (*REQUIRED_FILES, "MODEL_CARD.md") if not (BUNDLED_MODEL_DIR / name).is_file()]
            problem = f"{BUNDLED_MODEL_DIR} lacks {', '.join(missing)}" if missing else ""
        else:
            problem = f"{BUNDLED_MODEL_DIR} does not exist"
        if problem:
            raise BundledModelMissing(
                f"the bundled model is not installed ({problem}); pass --model FOLDER, a model folder written by "
                "scripts/train.py (or several folders for an ensemble)")
        folders.append(BUNDLED_MODEL_DIR)
    return folders


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The command's options; `prog` names it in the usage line (default: the running file's name)."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, action="extend", nargs="+",
                   help="model folder written by scripts/train.py, or 'bundled', the model shipped with the package; "
                        "several (or --model repeated) = an ensemble (default: bundled)")
    p.add_argument("--cache", type=Path, help="HDF5 cell cache written by scripts/segment.py (or --images)")
    p.add_argument("--images", type=Path, metavar="DIR",
                   help="folder of fields ({id}_{red,green,blue,yellow}.png/jpg/tif) to segment first, into "
                        f"OUT/{IMAGES_CACHE_NAME} (kept: a rerun resumes) (or --cache)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--batch-size", type=whole_number(1), default=None,
                   help="images per forward pass (default: 8 on the CPU, 256 on a GPU)")
    p.add_argument("--cell-budget", type=whole_number(1), default=None, metavar="N",
                   help="most cells per forward pass, counting each image's padding to the largest of its pass "
                        "(default: no limit on the CPU, 4096 on a GPU)")
    p.add_argument("--device", default="auto",
                   help=f"{DEVICE_CHOICES_TEXT}; on a GPU with bf16 the passes run in bf16 (default: %(default)s)")
    p.add_argument("--cell-score", choices=("gated", "cell"), default="gated",
                   help="what cells.csv's class probabilities are: gated = sqrt(cell probability x image probability), "
                        "which ranks cells across images better; cell = the cell's own probability (default: %(default)s)")
    p.add_argument("--maps", type=Path, help="also draw per-cell localization maps here (see scripts/make_maps.py)")
    p.add_argument("--report", type=Path, help="also write a static HTML report here")
    p.add_argument("--map-classes", nargs="+", default=[], metavar="CLASS",
                   help="extra classes (ids or names) to draw panels for in every image (default: none)")
    return p


def segment_images(args: argparse.Namespace) -> Path | int:
    """--images: segment the fields into OUT/cells.h5 with segment.py's defaults (resuming a cache already there);
    the cache path, or segment's exit code when it failed."""
    from hpa_cells_cli import segment

    cache = args.out / IMAGES_CACHE_NAME
    print(f"Segmenting the fields in {args.images} into {cache} (kept: rerunning resumes)")
    code = segment.main(["--images", str(args.images), "--out", str(cache), "--device", str(args.device)],
                        prog="predict.py --images")
    if code != 0:
        return code
    if not cache.is_file():
        print(f"error: no fields to predict in {args.images}: no complete {{id}}_{{red,green,blue,yellow}} files "
              "were found or segmented (see the summary above)", file=sys.stderr)
        return 2
    return cache


def print_summary(predictions, members: list, seconds: float, out: Path, paths: dict, device: str) -> None:
    """The one-screen result: counts, speed, the device, the most predicted classes and the files written."""
    from hpa_cells.classes import CLASS_NAMES
    from hpa_cells.devices import device_line

    counts: dict[int, int] = {}
    for ids in predictions.predicted_labels().values():
        for c in ids:
            counts[c] = counts.get(c, 0) + 1
    kind = f"an ensemble of {len(members)} models" if len(members) > 1 else f"a {members[0].config.family} model"
    print(f"\nPredicted {len(predictions.image_ids)} images, {len(predictions.cells)} cells with {kind} in "
          f"{seconds:.1f} s ({len(predictions.image_ids) / seconds:.1f} images/s) -> {out}")
    print(f"  {device_line(device)}")
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:8]
    print("  most predicted: " + (", ".join(f"{CLASS_NAMES[c]} {n}" for c, n in top) or "none"))
    for name, path in paths.items():
        print(f"  {name:14s} {path}")


def check_cache(members: list, cache_path: Path) -> tuple[dict[str, int], dict[str, str]] | str:
    """(the cache's QC flag names, its skipped fields: id -> reason), or the one-line error: a cache that cannot be
    read (truncated, not HDF5), one where every field was skipped, one made otherwise than a model's training
    cache (crop size, whole fields vs cells; `mil.inference.check_cache_matches_model`). Warnings are printed."""
    from hpa_cells.cache import CellCache, CellCacheError
    from mil.inference import CacheModelMismatchError, check_cache_matches_model

    if not cache_path.is_file():
        return f"cell cache not found: {cache_path}"
    try:
        with CellCache(cache_path) as cache:
            flag_names, skipped = cache.qc_flag_names, cache.skipped
            num_images, crop_size, segmenter = cache.num_images, cache.crop_size, str(cache.provenance["segmenter"])
            num_cells = len(cache)
    except (CellCacheError, OSError, KeyError, ValueError) as err:
        return f"cell cache {cache_path} cannot be read ({err}); segment the fields again into a new file"
    skipped_reasons = dict(zip(skipped["image_id"], skipped["reason"], strict=True))
    if num_images == 0:
        first = next(iter(skipped_reasons.items()), None)
        detail = f" (first: {first[0]}: {first[1]})" if first else ""
        return (f"cell cache {cache_path} holds no field to predict: all {len(skipped_reasons)} fields were skipped "
                f"while segmenting{detail}")
    if num_cells == 0:
        return f"cell cache {cache_path} holds no cells in any of its {num_images} fields: nothing to predict"
    try:
        for loaded in members:
            warning = check_cache_matches_model(loaded, cache_path, crop_size, segmenter)
            if warning:
                print(f"warning: {warning}", file=sys.stderr)
    except CacheModelMismatchError as err:
        return str(err)
    return flag_names, skipped_reasons


def unpredicted_fields(predictions, cache_path: Path, skipped: dict[str, str]) -> dict[str, str]:
    """image id -> reason of the cache's fields without a prediction: its skipped fields and its images without
    cells (both go into submission.csv with an empty prediction)."""
    from hpa_cells.cache import CellCache

    with CellCache(cache_path) as cache:
        cached = cache.image_ids
    predicted = set(predictions.image_ids)
    missing = {i: "no cells" for i in cached if i not in predicted}
    return {**missing, **{i: reason for i, reason in skipped.items() if i not in predicted}}


def load_members(args: argparse.Namespace) -> list | str:
    """The --model folders loaded on the --device (resolved in `args.device`: "auto" becomes cuda or cpu), or the
    one-line error: a device this machine lacks, a missing or unreadable model folder."""
    from hpa_cells.devices import DeviceError, resolve_device
    from mil.model_folder import ModelFolderError, load_model

    try:
        args.device = resolve_device(args.device)
        return [load_model(folder, device=args.device) for folder in resolve_model_folders(args.model)]
    except (DeviceError, ModelFolderError, BundledModelMissing) as err:
        return str(err)


def main(argv: list[str] | None = None, *, prog: str | None = None) -> int:
    """Run `predict` with `argv` (default: sys.argv[1:]); 0 on success, 2 for bad input."""
    args = build_parser(prog).parse_args(argv)
    if (args.cache is None) == (args.images is None):
        print(f"error: {ONE_INPUT_ERROR}", file=sys.stderr)
        return 2
    from hpa_cells.cache import CellCacheError
    from hpa_cells.devices import describe_device
    from hpa_cells.maps import class_id_of
    from hpa_cells.predictions import write_prediction_folder
    from mil.ensemble import predict_members
    from mil.inference import prediction_batching

    try:
        map_classes = [class_id_of(c) for c in args.map_classes]
    except ValueError as err:
        print(f"error: --map-classes: {err}", file=sys.stderr)
        return 2
    started = time.time()
    members = load_members(args)  # the model first: a missing one fails before a long segmentation
    if isinstance(members, str):
        print(f"error: {members}", file=sys.stderr)
        return 2
    if args.images is not None:
        cache = segment_images(args)
        if isinstance(cache, int):
            return cache
        args.cache = cache
        started = time.time()  # the prediction's own speed below
    checked = check_cache(members, args.cache)
    if isinstance(checked, str):
        print(f"error: {checked}", file=sys.stderr)
        return 2
    flag_names, skipped = checked
    try:
        predictions, manifest = predict_members(members, args.cache, args.out, args.batch_size, args.device,
                                                cell_score=args.cell_score, cell_budget=args.cell_budget)
    except (CellCacheError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    manifest.update(device=describe_device(args.device),
                    batching=prediction_batching(args.device, args.batch_size, args.cell_budget).to_dict())
    unpredicted = unpredicted_fields(predictions, args.cache, skipped)
    paths = write_prediction_folder(predictions, args.out, manifest, flag_names, unpredicted)
    print_summary(predictions, members, time.time() - started, args.out, paths, args.device)
    if unpredicted:
        print(f"  {len(unpredicted)} fields without a prediction (skipped while segmenting, or without cells) are in "
              f"submission.csv with an empty prediction (manifest.json: unpredicted)")
    if args.maps is not None or args.report is not None:
        from hpa_cells.report import write_maps_and_report
        from hpa_cells_cli.maps import failure_lines

        drawn = write_maps_and_report(args.out, args.maps, args.report, map_classes)
        print(f"  {'maps':14s} {drawn.maps_dir} ({len(drawn.maps)} images, {drawn.seconds:.1f} s)")
        for line in failure_lines(drawn.failures, drawn.maps_dir):
            print(line)
        if drawn.report_index is not None:
            print(f"  {'report':14s} {drawn.report_index}")
    return 0
