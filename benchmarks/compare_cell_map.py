"""Is prediction folder B's cell mAP above A's beyond chance? A paired bootstrap over images.

    python benchmarks/compare_cell_map.py --a preds_attention/ --b preds_ensemble/ --truth SYNTHETIC_FOLDER
                                          [--val-of MODEL_FOLDER] [--resamples 1000] [--seed 0]

Both folders must be `predict.py` outputs of the same cell cache (their cells are matched to the true cells of
the synthetic folder's masks at IoU >= 0.6, as `evaluate.py` does). `--val-of` scores only the validation images
of a model folder (its metrics.json `val_image_ids`), as the MIL benchmark does; default: every image of the truth
folder that A predicted. Prints the two cell mAPs, B - A, its 95% bootstrap interval and the share of resamples
where B is above A (`hpa_cells.metrics.paired_bootstrap_cell_map`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--a", type=Path, required=True, help="prediction folder A (the reference)")
    p.add_argument("--b", type=Path, required=True, help="prediction folder B")
    p.add_argument("--truth", type=Path, required=True, help="synthetic folder with per-cell truth")
    p.add_argument("--val-of", type=Path, help="score only this model folder's validation images")
    p.add_argument("--resamples", type=int, default=1000, help="(default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from hpa_cells.cache import CellCache
    from hpa_cells.metrics import paired_bootstrap_cell_map, read_cell_truth
    from hpa_cells.predictions import PredictionFolderError, probs_by_cell, read_prediction_folder
    from hpa_cells.scoring import read_cell_masks

    try:
        folders = {"A": read_prediction_folder(args.a), "B": read_prediction_folder(args.b)}
        manifests = {name: folder.manifest for name, folder in folders.items()}
        cells = {name: folder.cells for name, folder in folders.items()}
        rules = {name: folder.cell_score for name, folder in folders.items()}
    except PredictionFolderError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if manifests["A"]["cache"] != manifests["B"]["cache"]:
        print(f"error: {args.a} and {args.b} predicted different caches ({manifests['A']['cache']} vs "
              f"{manifests['B']['cache']}); compare predictions of the same cache", file=sys.stderr)
        return 2
    keys = {name: table[["image_id", "cell_id"]].reset_index(drop=True) for name, table in cells.items()}
    if not keys["A"].equals(keys["B"]):
        print(f"error: {args.a} and {args.b} hold different cells (image_id, cell_id); compare predictions of the "
              "same cache", file=sys.stderr)
        return 2
    truth = read_cell_truth(args.truth)
    image_ids = [i for i in dict.fromkeys(cells["A"]["image_id"]) if i in truth]
    if not image_ids:
        print(f"error: no predicted image of {args.a} has per-cell truth in {args.truth}", file=sys.stderr)
        return 2
    if args.val_of is not None:
        wanted = set(json.loads((args.val_of / "metrics.json").read_text())["val_image_ids"])
        image_ids = [i for i in image_ids if i in wanted]
        if not image_ids:
            print(f"error: none of the validation images of {args.val_of} is among the scored images", file=sys.stderr)
            return 2
    with CellCache(manifests["A"]["cache"]) as cache:
        true_masks, pred_masks = read_cell_masks(cache, args.truth, image_ids)
    probs = {name: probs_by_cell(table[table["image_id"].isin(set(image_ids))]) for name, table in cells.items()}
    result = paired_bootstrap_cell_map(true_masks, truth, pred_masks, probs["A"], probs["B"], args.resamples,
                                       args.seed)
    print(f"{result.n_images} images; cell mAP A {result.map_a:.4f} ({args.a}, cell score {rules['A']}), "
          f"B {result.map_b:.4f} ({args.b}, cell score {rules['B']})")
    print(f"B - A = {result.difference:+.4f}; 95% bootstrap interval [{result.interval[0]:+.4f}, "
          f"{result.interval[1]:+.4f}] over {result.resamples} image resamples; B above A in "
          f"{100 * result.share_b_better:.0f}% of them")
    return 0


if __name__ == "__main__":
    sys.exit(main())
