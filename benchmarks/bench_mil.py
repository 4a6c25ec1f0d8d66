"""Does weak supervision work? The MIL benchmark of issues 4 and 6, on synthetic data with per-cell truth.

    python benchmarks/bench_mil.py --out runs/bench_mil [--images 800] [--seed 7] [--encoder resnet10t]
                                   [--epochs 10] [--rows attention mean image supervised dense ensemble]
                                   [--device cpu|cuda|auto] [--workers N]

Every row is trained on the same balanced synthetic set and the same multilabel-stratified train/validation
split (checked), and scored on the validation images only:
- attention: the crop MIL with the default head (per-class gated attention), image labels only;
- mean: the same with mean pooling (the simple baseline);
- image: the same encoder on the whole 4-channel field, no segmentation (`segment.py --segmenter whole-field`);
  its cell scores give every cell its image's probabilities;
- supervised: the same encoder trained on the true per-cell labels (`train.py --cell-labels`), the upper bound;
- dense: the smp FPN family, image labels only; ensemble: mean of the dense and attention cell probabilities.
The crop rows read a cache cut from the TRUE cell masks (`segment.py --segmenter masks`), so segmentation errors
are out of this comparison (they are measured in the segmentation benchmark) and cell ids are the true ids.
Cell mAP: the 2018-class cell AP over the validation images' true cells, averaged over classes present, for both
cell scores of `predict.py --cell-score`: `gated` (sqrt(cell x image probability), the default) and `cell` (the
cell's own probability); an ensemble averages its members' cells scored the same way.

Resumable: finished models and caches are reused. Results: `benchmarks/results/mil_benchmark.json` and a
markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ROWS = ("attention", "mean", "image", "supervised", "dense", "ensemble")
ROW_TITLES = {
    "attention": "attention MIL (class-gated attention, default head)",
    "mean": "mean-pooling MIL",
    "image": "image-level CNN (whole field, no segmentation)",
    "supervised": "fully supervised cell classifier (upper bound)",
    "dense": "dense FPN MIL (pixel maps pooled into cells)",
    "ensemble": "ensemble: attention MIL + dense",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "runs" / "bench_mil")
    p.add_argument("--images", type=int, default=800, help="synthetic images (default: %(default)s)")
    p.add_argument("--seed", type=int, default=7, help="data and split seed (default: %(default)s)")
    p.add_argument("--encoder", default="resnet10t", help="timm encoder of every crop row (default: %(default)s)")
    p.add_argument("--input-size", type=int, default=64, help="crop input size (default: %(default)s)")
    p.add_argument("--image-size", type=int, default=256, help="whole-field input size of the image CNN")
    p.add_argument("--epochs", type=int, default=10, help="epochs of every crop row (default: %(default)s)")
    p.add_argument("--max-cells", type=int, default=8, help="cells drawn per training bag (default: %(default)s)")
    p.add_argument("--dense-epochs", type=int, default=6, help="epochs of the dense row (default: %(default)s)")
    p.add_argument("--dense-input-size", type=int, default=160,
                   help="field size the dense model sees (default: %(default)s; 256 costs 2.6x more on CPU)")
    p.add_argument("--dense-decoder-channels", type=int, default=64,
                   help="decoder width of the dense row (default: %(default)s; 0 = smp's default)")
    p.add_argument("--dense-init", choices=("none", "attention"), default="none",
                   help="start the dense row's encoder from the attention row's trained crop encoder (and take its "
                        "input standardisation) (default: %(default)s)")
    p.add_argument("--dense-window", type=int, default=None,
                   help="train the dense row on random windows of this size at --dense-input-size (default: whole fields)")
    p.add_argument("--dense-cell-pool", choices=("mean", "lse"), default="mean", help="(default: %(default)s)")
    p.add_argument("--lr", type=float, default=1e-3, help="(default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    p.add_argument("--device", default="cpu",
                   help="training and prediction device: cpu, cuda or auto (default: %(default)s, the recorded runs')")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers of training (default: %(default)s)")
    p.add_argument("--cell-score", choices=("gated", "cell"), default="gated",
                   help="the cell score of the cell_map entry and the ensemble combinations; both scores are recorded "
                        "(default: %(default)s)")
    p.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS))
    p.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results" / "mil_benchmark.json")
    return p.parse_args(argv)


def build_caches(args: argparse.Namespace) -> tuple[Path, Path, Path]:
    """(synthetic folder, true-mask cell cache, whole-field cache), each made once."""
    from hpa_cells.crops import CropConfig
    from hpa_cells.synthetic.dataset import SyntheticConfig, write_dataset
    from segmentation.mask_folder import MaskFolderSegmenter
    from segmentation.segment_to_cache import SegmentJob, segment_folder
    from segmentation.whole_field import WholeFieldSegmenter

    folder = args.out / "synthetic"
    done = folder / "train.csv"
    if not done.is_file() or len(done.read_text().splitlines()) - 1 < args.images:  # resuming re-derives every image
        write_dataset(folder, args.images, SyntheticConfig(seed=args.seed, size=512, balanced=True),
                      show_progress=True)
    cells = args.out / "cells_truth.h5"
    fields = args.out / f"fields_{args.image_size}.h5"
    caches = [(cells, MaskFolderSegmenter(folder), CropConfig())]
    if "image" in args.rows:  # only the image row reads whole fields
        caches.append((fields, WholeFieldSegmenter(), CropConfig(crop_size=args.image_size, margin_fraction=0.0)))
    for path, segmenter, crop in caches:
        job = SegmentJob(images_dir=folder, out_path=path, labels_path=folder / "train.csv", working_size=512,
                         crop=crop)
        summary = segment_folder(job, segmenter)
        print(f"{path.name}: " + "; ".join(summary.lines()[:2]))
    return folder, cells, fields


def train_row(row: str, args: argparse.Namespace, cells: Path, fields: Path, truth: Path) -> tuple[Path, dict]:
    from mil.config import DenseConfig, MILConfig
    from mil.training import TrainConfig, train_model

    base = TrainConfig(epochs=args.epochs, learning_rate=args.lr, seed=args.seed, device=args.device, patience=100,
                       max_cells=args.max_cells, num_workers=args.workers)
    crop = MILConfig(encoder=args.encoder, input_size=args.input_size)
    settings = {
        "attention": (cells, crop, base),
        "mean": (cells, replace(crop, head="mean"), base),
        "image": (fields, replace(crop, head="mean", input_size=args.image_size, use_mask_channel=False),
                  replace(base, max_cells=1, exclude_flags=())),
        "supervised": (cells, replace(crop, head="instance"), replace(base, cell_labels=str(truth / "cells.csv"))),
        "dense": (cells, DenseConfig(input_size=args.dense_input_size, cell_pool=args.dense_cell_pool,
                                     decoder_channels=args.dense_decoder_channels or None),
                  replace(base, epochs=args.dense_epochs, batch_size=4, dense_window=args.dense_window)),
    }
    cache, model_config, train_config = settings[row]
    if row == "dense" and args.dense_init == "attention":
        from mil.families.dense import with_crop_model_statistics

        start = args.out / "models" / "attention"
        model_config = with_crop_model_statistics(replace(model_config, encoder=f"tu-{args.encoder}"), start)
        train_config = replace(train_config, encoder_weights=str(start))
    folder = args.out / "models" / row
    if (folder / "metrics.json").is_file() and (folder / "weights.safetensors").is_file():
        print(f"{row}: reusing the trained model in {folder}")
        return folder, json.loads((folder / "metrics.json").read_text())
    print(f"{row}: training {ROW_TITLES[row]} -> {folder}")
    return folder, train_model(cache, folder, model_config, train_config)


def score(row: str, predictions, val_ids: list[str], cells_cache: Path, truth: Path) -> dict:
    """Image macro F1 (fitted thresholds) and cell mAP on the validation images."""
    import numpy as np

    from hpa_cells.cache import CellCache
    from hpa_cells.classes import CLASS_NAMES
    from hpa_cells.labels import read_labels, to_multi_hot
    from hpa_cells.metrics import cell_level_map, macro_f1, read_cell_truth
    from hpa_cells.predictions import probs_by_cell

    labels = read_labels(truth / "train.csv")
    position = {image_id: i for i, image_id in enumerate(predictions.image_ids)}
    rows = [position[i] for i in val_ids]
    y_true = to_multi_hot([labels[i] for i in val_ids])
    y_pred = predictions.image_probs[rows] >= predictions.thresholds
    cell_truth = read_cell_truth(truth)
    masks, probs = {}, {}
    with CellCache(cells_cache) as cache:
        for image_id in val_ids:
            masks[image_id] = cache.full_masks(image_id)[0]
    if row == "image":  # every cell gets its image's probabilities
        for image_id in val_ids:
            image_probs = predictions.image_probs[position[image_id]]
            probs[image_id] = {int(c): image_probs for c in np.unique(masks[image_id]) if c}
    else:
        cells = predictions.cells
        probs = probs_by_cell(cells[cells["image_id"].isin(set(val_ids))])
    result = cell_level_map(masks, {i: cell_truth[i] for i in val_ids}, masks, probs)
    return {"image_macro_f1": macro_f1(y_true, y_pred), "cell_map": result.mean_ap,
            "per_class_cell_ap": {CLASS_NAMES[k]: (None if np.isnan(v) else float(v))
                                  for k, v in enumerate(result.per_class_ap)},
            "val_images": len(val_ids), "val_true_cells": result.n_true_cells}


def with_cell_score(own, cell_score: str):
    """Predictions `own` (the cells' own probabilities) with the cells scored by `cell_score` (mil.inference)."""
    from dataclasses import replace as replace_field

    import numpy as np

    from hpa_cells.classes import CLASS_NAMES
    from mil.inference import score_cells

    classes = list(CLASS_NAMES)
    cells = own.cells.copy()
    probs = cells[classes].to_numpy(np.float64)
    position = {image_id: i for i, image_id in enumerate(own.image_ids)}
    for image_id, rows in cells.groupby("image_id", sort=False).indices.items():
        image_probs = own.image_probs[position[image_id]].astype(np.float64)
        probs[rows] = score_cells(probs[rows], image_probs, cell_score)
    cells[classes] = probs
    return replace_field(own, cells=cells, cell_score=cell_score)


def combination_scores(attention, dense, val_ids: list[str], cells_cache: Path, truth: Path,
                       own: tuple | None = None) -> dict[str, float]:
    """Cell mAP of other ways to combine the two members' per-cell probabilities (the ensemble row is the mean).
    `own`: the two members' predictions with the cells' own probabilities, for gating after averaging."""
    import numpy as np
    import pandas as pd

    from hpa_cells.classes import CLASS_NAMES
    from mil.ensemble import average_predictions

    classes = list(CLASS_NAMES)
    a, d = attention.cells[classes].to_numpy(float), dense.cells[classes].to_numpy(float)

    def logit(p: np.ndarray) -> np.ndarray:
        p = np.clip(p, 1e-6, 1 - 1e-6)
        return np.log(p / (1 - p))

    rules = {"weights 0.75 / 0.25": 0.75 * a + 0.25 * d, "weights 0.9 / 0.1": 0.9 * a + 0.1 * d,
             "mean of per-class ranks": (pd.DataFrame(a).rank(pct=True).to_numpy()
                                         + pd.DataFrame(d).rank(pct=True).to_numpy()) / 2,
             "mean of logits": 1 / (1 + np.exp(-(logit(a) + logit(d)) / 2)), "geometric mean": np.sqrt(a * d)}
    if own is not None:  # gate after averaging: sqrt(mean of the cells' own p x mean of the image p)
        averaged = with_cell_score(average_predictions(list(own), ["attention", "dense"]), "gated")
        rules["gated after averaging (own cell p and image p averaged, then gated)"] = (
            averaged.cells[classes].to_numpy(float))
        attention_cells = with_cell_score(replace(own[0], image_probs=averaged.image_probs), "gated")
        rules["attention's own cell p gated by the mean image p of both"] = attention_cells.cells[classes].to_numpy(float)
    out = {}
    for name, probs in rules.items():
        combined = average_predictions([attention, dense], ["attention", "dense"])
        combined.cells[classes] = probs
        out[name] = score("ensemble", combined, val_ids, cells_cache, truth)["cell_map"]
        print(f"ensemble, {name}: cell mAP {out[name]:.3f}")
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import logging

    import torch

    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the training loop's per-epoch lines

    from mil.ensemble import average_predictions
    from mil.inference import predict_cache
    from mil.model_folder import load_model

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    truth, cells, fields = build_caches(args)
    results = json.loads(args.results.read_text()) if args.results.is_file() else {}
    results.setdefault("rows", {})
    predictions, val_ids = {}, None
    for row in [r for r in args.rows if r != "ensemble"] + (["ensemble"] if "ensemble" in args.rows else []):
        if row == "ensemble":
            missing = [m for m in ("attention", "dense") if m not in predictions]
            if missing:
                print(f"ensemble: needs the rows {missing} in this run; skipped")
                continue
            by_score = {rule: average_predictions([predictions["attention"][rule], predictions["dense"][rule]],
                                                  ["attention", "dense"]) for rule in ("cell", "gated")}
            entry = {"train_seconds": results["rows"]["attention"]["train_seconds"]
                     + results["rows"]["dense"]["train_seconds"],
                     "other_combinations_cell_map": combination_scores(predictions["attention"][args.cell_score],
                                                                       predictions["dense"][args.cell_score],
                                                                       val_ids, cells, truth,
                                                                       own=(predictions["attention"]["cell"],
                                                                            predictions["dense"]["cell"]))}
        else:
            folder, metrics = train_row(row, args, cells, fields, truth)
            ids = metrics["val_image_ids"]
            if val_ids is None:
                val_ids = ids
            elif sorted(ids) != sorted(val_ids):
                raise RuntimeError(f"row {row} was validated on other images than the first row")
            loaded = load_model(folder)
            started = time.time()
            own = predict_cache(loaded, fields if row == "image" else cells, device=args.device, show_progress=False,
                                cell_score="cell")
            seconds = time.time() - started
            by_score = {"cell": own, "gated": with_cell_score(own, "gated")}
            predictions[row] = by_score
            train_images = metrics["n_train_images"] * metrics["epochs_run"]
            entry = {"train_seconds": metrics["train_seconds_this_run"] if metrics["epochs_run"] else None,
                     "epochs": metrics["epochs_run"], "best_epoch": metrics["best_epoch"],
                     "train_bags_per_second": round(train_images / metrics["train_seconds_this_run"], 2)
                     if metrics["train_seconds_this_run"] else None,
                     "train_cells_per_second": metrics["train_cells_per_second"],
                     "inference_images_per_second": round(len(own.image_ids) / seconds, 2),
                     "config": json.loads((folder / "config.json").read_text())["model"]}
        scores = {rule: score(row, by_score[rule], val_ids, cells, truth) for rule in ("cell", "gated")}
        entry.update(scores[args.cell_score])
        entry.update({"cell_score": args.cell_score, "cell_map_gated": scores["gated"]["cell_map"],
                      "cell_map_own_probability": scores["cell"]["cell_map"]})
        results["rows"][row] = {**results["rows"].get(row, {}), **entry}
        print(f"{row}: image macro F1 {entry['image_macro_f1']:.3f}, cell mAP gated {entry['cell_map_gated']:.3f}, "
              f"own {entry['cell_map_own_probability']:.3f}")
    save_results(results, args)
    print_table(results)
    return 0


def save_results(results: dict, args: argparse.Namespace) -> None:
    """The results with the run's settings, machine and date, written to `args.results` (JSON)."""
    results["settings"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    results["machine"] = f"{platform.node()} {platform.processor() or platform.machine()}, torch threads {args.threads}"
    results["date"] = time.strftime("%Y-%m-%d")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=1) + "\n")


def _format(row: dict, key: str, digits: int = 1) -> str:
    value = row.get(key)
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def print_table(results: dict) -> None:
    print("\n| row | train s | epochs | bags/s | cells/s | inference images/s | image macro F1 | cell mAP, gated "
          "| cell mAP, cell's own p |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in ROWS:
        if row not in results["rows"]:
            continue
        r = results["rows"][row]
        print(f"| {ROW_TITLES[row]} | {_format(r, 'train_seconds', 0)} | {_format(r, 'epochs')} "
              f"| {_format(r, 'train_bags_per_second')} | {_format(r, 'train_cells_per_second')} "
              f"| {_format(r, 'inference_images_per_second')} | {r['image_macro_f1']:.3f} "
              f"| {_format(r, 'cell_map_gated', 3)} | {_format(r, 'cell_map_own_probability', 3)} |")


if __name__ == "__main__":
    sys.exit(main())
