"""The weak-supervision scoreboard of issue 15: candidate recipes against the default MIL on one fixed split.

    python benchmarks/bench_weak_supervision.py --out runs/bench_mil --rows default mean supervised topk1 ...
                                                [--threads 1] [--resamples 1000] [--score-only]

The data, caches and split are the MIL benchmark's (`bench_mil.py`: 800 balanced synthetic 512 px fields of seed 7,
a cache cut from the TRUE cell masks, one multilabel-stratified split, 164 validation images with 4,499 true
cells). Every row is one recipe, trained by one command (this script, `--rows NAME`), and scored on the
validation images only:
- cell mAP against the true per-cell labels, gated (`sqrt(p_cell x p_image)`, the default cell score) and with
  the cells' own probabilities; image macro F1 with the model's fitted thresholds;
- a paired bootstrap over the 164 validation images against the `default` row (and the `mean` row): the same
  image draws for both, 1,000 resamples (`hpa_cells.metrics.paired_bootstrap_cell_map`). A recipe replaces the
  default only when the interval of its difference excludes zero;
- compute: training seconds, epochs, cells per second.
`default`, `mean` and `supervised` train into bench_mil.py's model folders (same settings), so a model either
script trained is reused. Rows whose name starts with `gate_fit` train nothing: they rescore the `default` row's
model with the gate `p_cell^(1-w) x p_image^w`, `w` fitted on mosaics of single-label VALIDATION images, whose
cell truth is their image label (image labels only, no cell truth); see `fit_gate_weight`.

Resumable (finished models and prediction files are reused). Results: `benchmarks/results/weak_supervision.json`
and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_mil import build_caches, save_results, score  # noqa: E402

RECIPES: dict[str, tuple[str, dict, dict]] = {
    # name: (title, MILConfig changes, TrainConfig changes); "self_training" in the train changes = rounds
    "default": ("attention MIL, the default recipe (class-gated attention, 64 px, 10 epochs)", {}, {}),
    "mean": ("mean-pooling MIL", {"head": "mean"}, {}),
    "supervised": ("fully supervised cell classifier (true cell labels; upper bound)", {"head": "instance"},
                   {"cell_labels": "TRUTH"}),
    "negative_weight_1": ("default, negative-cell loss weight 1.0 (default 0.5)", {}, {"negative_cell_weight": 1.0}),
    "negative_weight_0": ("default without the negative-cell loss", {}, {"negative_cell_weight": 0.0}),
    "topk1": ("default + top-1 instance loss (weight 1)", {}, {"topk_cells": 1}),
    "topk2_half": ("default + top-2 instance loss (weight 0.5)", {}, {"topk_cells": 2, "topk_weight": 0.5}),
    "dual_stream": ("DSMIL dual-stream head (max stream + critical-instance attention)", {"head": "dual_stream"}, {}),
    "mixing_bags": ("default + 160 mixing bags per epoch (cells of 2-4 single-label images, union label)", {},
                    {"mosaic_bags": 160}),
    "mixing_fraction": ("default + mixing bags, one per four training images (mosaic_fraction 0.25; the new default's "
                        "form, which scales with the data: 159 bags here)", {}, {"mosaic_fraction": 0.25}),
    "mixing_bags_self_training": ("mixing bags (160) + self-training, 1 round (mosaic cells: no pseudo-labels)", {},
                                  {"mosaic_bags": 160, "self_training": 1}),
    "mixing_fraction_self_training": ("mixing bags (fraction 0.25) + self-training, 1 round", {},
                                      {"mosaic_fraction": 0.25, "self_training": 1}),
    "self_training": ("self-training, 1 round after the default MIL (pseudo-labels 0.5 / 0.2 of the image's best)",
                      {}, {"self_training": 1}),
    "self_training_2": ("self-training, 2 rounds", {}, {"self_training": 2}),
    "epochs20": ("default, 20 epochs", {}, {"epochs": 20}),
    "mixing_bags_epochs20": ("mixing bags (160), 20 epochs", {}, {"mosaic_bags": 160, "epochs": 20}),
    "self_training_epochs20": ("self-training, 1 round, every round 20 epochs", {}, {"self_training": 1, "epochs": 20}),
    "input96": ("default, 96 px input", {"input_size": 96}, {}),
    "supervised_epochs20": ("supervised upper bound, 20 epochs", {"head": "instance"},
                            {"cell_labels": "TRUTH", "epochs": 20}),
    "supervised_input96": ("supervised upper bound, 96 px", {"head": "instance", "input_size": 96},
                           {"cell_labels": "TRUTH"}),
    "resnet18": ("default with a resnet18 encoder", {"encoder": "resnet18"}, {}),
}
FOLDER_NAMES = {"default": "attention", "mean": "mean", "supervised": "supervised"}
"""Rows that share bench_mil.py's model folders (the same settings)."""
REFERENCES = ("default", "mean", "mixing_bags", "self_training", "epochs20")
"""The rows others are compared with (paired bootstrap) when both were scored in the same run: every row with the
former default; the rows of `EXTRA_REFERENCES` also with theirs."""
EXTRA_REFERENCES = {"default": ("mean",), "mixing_bags": ("mean",), "mixing_bags_self_training": ("mean", "mixing_bags"),
                    "epochs20": ("mean",), "gate_fit_mixing_bags": ("mixing_bags",),
                    "self_training_2": ("self_training",), "mixing_bags_epochs20": ("mean", "epochs20")}
"""Comparisons beyond the former default (each costs a bootstrap): a recipe with the one it builds on, the best
rows with mean pooling."""
SUPERVISED_OF = {"epochs20": "supervised_epochs20", "mixing_bags_epochs20": "supervised_epochs20", "self_training_epochs20": "supervised_epochs20",
                 "input96": "supervised_input96", "supervised_epochs20": "supervised_epochs20",
                 "supervised_input96": "supervised_input96"}
"""The upper bound trained the same way (same epochs, same input) as a row; every other row: `supervised`."""
ROUND0_SOURCES = {"mixing_bags_self_training": "mixing_bags", "mixing_fraction_self_training": "mixing_fraction",
                  "self_training": "default", "self_training_2": "default", "self_training_epochs20": "epochs20"}
"""Self-training rows: the row whose model is their round 0 (the same recipe without self-training)."""
GATE_ROWS = {"gate_fit": "default", "gate_fit_mixing_bags": "mixing_bags"}
"""Rows that rescore another row's model with a gate weight fitted on validation mosaics: row -> that row."""
ROWS = tuple(RECIPES) + tuple(GATE_ROWS)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "runs" / "bench_mil", help="bench_mil.py's work folder")
    p.add_argument("--rows", nargs="+", choices=ROWS, default=["default", "mean"])
    p.add_argument("--images", type=int, default=800, help="as bench_mil.py (default: %(default)s)")
    p.add_argument("--seed", type=int, default=7, help="as bench_mil.py (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=10, help="epochs of every row unless it sets its own")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="training and prediction device (default: %(default)s)")
    p.add_argument("--resamples", type=int, default=1000, help="paired bootstrap resamples (default: %(default)s)")
    p.add_argument("--gate-mosaics", type=int, default=200,
                   help="gate_fit: validation mosaics the gate weight is fitted on (default: %(default)s)")
    p.add_argument("--score-only", action="store_true", help="train nothing; score the rows already trained")
    p.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results" / "weak_supervision.json")
    return p.parse_args(argv)


def configs(row: str, args: argparse.Namespace, truth: Path):
    """(MILConfig, TrainConfig, self-training rounds) of a recipe: bench_mil.py's base with the row's changes."""
    from mil.config import MILConfig
    from mil.training import TrainConfig

    _, model_changes, train_changes = RECIPES[row]
    train_changes = dict(train_changes)
    rounds = int(train_changes.pop("self_training", 0))
    if train_changes.get("cell_labels") == "TRUTH":
        train_changes["cell_labels"] = str(truth / "cells.csv")
    base = TrainConfig(epochs=args.epochs, learning_rate=1e-3, seed=args.seed, device=args.device, patience=100,
                       max_cells=8)
    return replace(MILConfig(encoder="resnet10t", input_size=64), **model_changes), replace(base, **train_changes), rounds


def model_folder(row: str, args: argparse.Namespace) -> Path:
    return args.out / "models" / FOLDER_NAMES.get(row, row)


def train(row: str, args: argparse.Namespace, cells: Path, truth: Path) -> dict | None:
    """The row's metrics.json content, training it unless its folder holds a finished model (None when it does
    not and --score-only was given)."""
    from mil.model_files import is_trained_model_folder
    from mil.self_training import train_with_self_training
    from mil.training import train_model

    folder = model_folder(row, args)
    if is_trained_model_folder(folder):
        return json.loads((folder / "metrics.json").read_text())
    if args.score_only:
        return None
    model_config, train_config, rounds = configs(row, args, truth)
    print(f"{row}: training {RECIPES[row][0]} -> {folder}")
    if not rounds:
        return train_model(cells, folder, model_config, train_config)
    reuse_earlier_rounds(row, args, folder)
    return train_with_self_training(cells, folder, model_config, train_config, rounds)


MODEL_FILES = ("config.json", "weights.safetensors", "thresholds.json", "metrics.json", "metrics.csv",
               "training_curves.png")


def reuse_earlier_rounds(row: str, args: argparse.Namespace, folder: Path) -> None:
    """Round 0 of a self-training row IS the model of its recipe without self-training (`ROUND0_SOURCES`), and
    round 1 of a 2-round row is the 1-round row's model (same recipe, same seed): copy them instead of training
    them again."""
    first = folder / "round0"
    source = model_folder(ROUND0_SOURCES.get(row, "default"), args)
    if not first.exists() and (source / "weights.safetensors").is_file():
        shutil.copytree(source, first, ignore=shutil.ignore_patterns("checkpoint", "val_predictions*"))
        print(f"{row}: round 0 is the model of {source}")
    one_round = model_folder("self_training", args)
    second = folder / "round1"
    if row == "self_training_2" and not second.exists() and (one_round / "self_training.json").is_file():
        second.mkdir(parents=True)
        for name in MODEL_FILES:
            shutil.copy2(one_round / name, second / name)
        shutil.copy2(one_round / "round1" / "pseudo_labels.csv", second / "pseudo_labels.csv")
        print(f"{row}: round 1 is the self_training row's model ({one_round})")


def validation_predictions(folder: Path, cells: Path, val_ids: list[str], device: str):
    """(the model's predictions of the validation images with the cells' own probabilities, images per second or
    None when reused): saved beside the model as `val_predictions.npz` (exact float32 probabilities, no pickle)."""
    import pandas as pd

    from hpa_cells.classes import CLASS_NAMES
    from hpa_cells.predictions import Predictions
    from mil.inference import bags_from_cache, model_exclude_flags, predict_bags
    from mil.model_folder import load_model

    saved = folder / "val_predictions.npz"
    classes = list(CLASS_NAMES)
    if saved.is_file():
        data = np.load(saved, allow_pickle=False)
        table = pd.DataFrame(data["cell_probs"], columns=classes)
        table.insert(0, "cell_id", data["cell_ids"])
        table.insert(0, "image_id", data["cell_image_ids"].astype(str))
        return Predictions(list(data["image_ids"].astype(str)), data["image_probs"], table,
                           np.zeros((len(table), 1), np.float32), data["thresholds"], "cell"), None
    loaded = load_model(folder)
    bags = bags_from_cache(cells, model_exclude_flags(loaded), image_ids=val_ids)
    started = time.time()
    own = predict_bags(loaded, bags, device=device, total=len(val_ids), cell_score="cell")
    seconds = time.time() - started
    np.savez(saved, image_ids=np.asarray(own.image_ids), image_probs=own.image_probs.astype(np.float32),
             thresholds=np.asarray(own.thresholds, np.float32),
             cell_image_ids=own.cells["image_id"].to_numpy().astype(str),
             cell_ids=own.cells["cell_id"].to_numpy(np.int64),
             cell_probs=own.cells[classes].to_numpy(np.float32))
    return own, len(val_ids) / seconds


def cell_probabilities(predictions, val_ids: list[str]) -> dict:
    from hpa_cells.predictions import probs_by_cell

    cells = predictions.cells
    return probs_by_cell(cells[cells["image_id"].isin(set(val_ids))])


def weighted_gate(own, weight: float):
    """Predictions with every cell scored `p_cell^(1-weight) x p_image^weight` (0.5 ranks as the default gate)."""
    from hpa_cells.classes import CLASS_NAMES

    classes = list(CLASS_NAMES)
    cells = own.cells.copy()
    probs = np.clip(cells[classes].to_numpy(np.float64), 1e-12, 1.0)
    position = {image_id: i for i, image_id in enumerate(own.image_ids)}
    image_rows = np.array([position[i] for i in cells["image_id"]])
    image_probs = np.clip(own.image_probs[image_rows].astype(np.float64), 1e-12, 1.0)
    cells[classes] = probs ** (1 - weight) * image_probs ** weight
    return replace(own, cells=cells, cell_score="gated" if weight == 0.5 else f"gate weight {weight}")


def fit_gate_weight(folder: Path, cells: Path, val_ids: list[str], n_mosaics: int, seed: int) -> dict:
    """The gate weight `w` (0, 0.1, ..., 1) that maximises the cell mAP on mosaics of single-label validation
    images, each cell's truth being its source image's label: image labels only."""
    from hpa_cells.classes import CLASS_NAMES
    from mil.model_folder import load_model
    from mil.mosaic_evaluation import predict_mosaics
    from mil.mosaics import draw_mosaics, mosaic_cell_truth, score_mosaic_cells, single_label_images

    sources = single_label_images([cells], val_ids)
    mosaics = draw_mosaics(sources, n_mosaics, seed=seed, id_prefix="gate-mosaic")
    own = predict_mosaics(load_model(folder), [cells], mosaics, cell_score="cell")
    truth = mosaic_cell_truth(mosaics)
    by_weight = {}
    for weight in np.round(np.linspace(0, 1, 11), 2):
        probs = weighted_gate(own, float(weight)).cells[list(CLASS_NAMES)].to_numpy(np.float64)
        by_weight[float(weight)] = score_mosaic_cells(probs, truth).mean_ap
    best = max(by_weight, key=lambda w: (by_weight[w], -abs(w - 0.5)))
    return {"weight": best, "mosaic_cell_map_by_weight": by_weight, "mosaics": len(mosaics),
            "mosaic_cells": len(truth), "single_label_validation_images": len(sources)}


class Scoreboard:
    """The validation truth, loaded once, and the paired comparisons of each row with the reference rows."""

    def __init__(self, cells: Path, truth: Path, val_ids: list[str], resamples: int, seed: int) -> None:
        from hpa_cells.cache import CellCache
        from hpa_cells.metrics import read_cell_truth

        self.cells, self.truth, self.val_ids = cells, truth, val_ids
        self.resamples, self.seed = resamples, seed
        all_truth = read_cell_truth(truth)
        self.cell_truth = {i: all_truth[i] for i in val_ids}
        with CellCache(cells) as cache:
            self.masks = {i: cache.full_masks(i)[0] for i in val_ids}
        self.gated: dict[str, dict] = {}

    def score_row(self, row: str, own, gate_weight: float = 0.5) -> dict:
        """Image macro F1, cell mAP (gated with `gate_weight`, and own) with per-class AP; keeps the gated cell
        scores for pairing."""
        gated = weighted_gate(own, gate_weight)
        scores = {rule: score(row, p, self.val_ids, self.cells, self.truth) for rule, p in (("gated", gated),
                                                                                           ("own", own))}
        from hpa_cells.metrics import matched_per_image

        self.gated[row] = matched_per_image(self.masks, self.cell_truth, self.masks,
                                            cell_probabilities(gated, self.val_ids))
        return {"image_macro_f1": scores["gated"]["image_macro_f1"], "cell_map_gated": scores["gated"]["cell_map"],
                "cell_map_own_probability": scores["own"]["cell_map"],
                "per_class_cell_ap_gated": scores["gated"]["per_class_cell_ap"],
                "val_images": len(self.val_ids), "val_true_cells": scores["gated"]["val_true_cells"]}

    def paired(self, reference: str, row: str) -> dict | None:
        """Paired bootstrap of the row's gated cell mAP minus the reference row's (None if either is missing)."""
        from hpa_cells.metrics import paired_bootstrap_of_matched

        if reference not in self.gated or row not in self.gated or reference == row:
            return None
        result = paired_bootstrap_of_matched(self.gated[reference], self.gated[row], self.resamples, self.seed)
        return {"difference": result.difference, "interval": list(result.interval),
                "share_better": result.share_b_better, "resamples": result.resamples, "images": result.n_images}


def pseudo_label_quality(folder: Path, truth: Path) -> dict:
    """Diagnostics only (never used to choose anything): each round's pseudo-labels against the true cell labels
    of the training cells: precision and recall of the positive targets, the share of true negatives among the
    negative targets, and the share of (cell, class) entries left unknown."""
    import pandas as pd

    from hpa_cells.metrics import read_cell_truth

    cell_truth = read_cell_truth(truth)
    out = {}
    for path in sorted(folder.glob("round*/pseudo_labels.csv")):
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
        counts = {"true_positive": 0, "positive": 0, "truly_positive": 0, "negative": 0, "true_negative": 0,
                  "unknown": 0, "entries": 0}
        for image_id, cell_id, labels, unknown in table.itertuples(index=False):
            true = set(cell_truth[image_id].get(int(cell_id), ()))
            positive, uncertain = set(map(int, labels.split())), set(map(int, unknown.split()))
            negative = set(range(28)) - positive - uncertain
            counts["true_positive"] += len(positive & true)
            counts["positive"] += len(positive)
            counts["truly_positive"] += len(true)
            counts["negative"] += len(negative)
            counts["true_negative"] += len(negative - true)
            counts["unknown"] += len(uncertain)
            counts["entries"] += 28
        out[path.parent.name] = {
            "positive_precision": counts["true_positive"] / max(counts["positive"], 1),
            "positive_recall": counts["true_positive"] / max(counts["truly_positive"], 1),
            "negative_precision": counts["true_negative"] / max(counts["negative"], 1),
            "unknown_share": counts["unknown"] / max(counts["entries"], 1), **counts}
    return out


def compute_entry(metrics: dict, folder: Path) -> dict:
    """Training cost of a row: seconds and epochs over every round of a self-trained row."""
    per_round = metrics.get("self_training", {}).get("per_round")
    summary = folder / "self_training.json"
    if per_round is None and summary.is_file():
        per_round = json.loads(summary.read_text())["per_round"]
    seconds = metrics.get("train_seconds_this_run")
    rounds = 0
    if per_round:
        seconds = sum(r["train_seconds"] or 0 for r in per_round)
        rounds = len(per_round) - 1
    return {"train_seconds": None if seconds is None else round(seconds, 1), "epochs": metrics["epochs_run"], "best_epoch": metrics["best_epoch"],
            "self_training_rounds": rounds, "train_cells_per_second": metrics.get("train_cells_per_second"),
            "trained_on": metrics.get("trained_on", {}).get("device", {}).get("name")}


def run_row(row: str, args: argparse.Namespace, board: Scoreboard | None, cells: Path, truth: Path,
            results: dict) -> Scoreboard | None:
    """Train (or reuse) and score one row; returns the scoreboard (made at the first scored row)."""
    if row in GATE_ROWS:
        return run_gate_row(row, args, board, cells, results)
    metrics = train(row, args, cells, truth)
    if metrics is None:
        print(f"{row}: not trained yet (--score-only); skipped")
        return board
    val_ids = metrics["val_image_ids"]
    if board is None:
        board = Scoreboard(cells, truth, val_ids, args.resamples, args.seed)
    elif sorted(val_ids) != sorted(board.val_ids):
        raise RuntimeError(f"row {row} was validated on other images than the scoreboard's split")
    folder = model_folder(row, args)
    own, images_per_second = validation_predictions(folder, cells, board.val_ids, args.device)
    entry = {"title": RECIPES[row][0], **compute_entry(metrics, folder), **board.score_row(row, own)}
    quality = pseudo_label_quality(folder, truth)
    if quality:
        entry["pseudo_label_quality"] = quality
    if images_per_second is not None:
        entry["inference_images_per_second"] = round(images_per_second, 2)
    results["rows"][row] = {**results["rows"].get(row, {}), **entry}
    print(f"{row}: image macro F1 {entry['image_macro_f1']:.3f}, cell mAP gated {entry['cell_map_gated']:.3f}, "
          f"own {entry['cell_map_own_probability']:.3f}, {entry['train_seconds']} s")
    return board


def run_gate_row(row: str, args: argparse.Namespace, board: Scoreboard | None, cells: Path, results: dict):
    """A row's model rescored with a gate weight fitted on validation mosaics (image labels only)."""
    base = GATE_ROWS[row]
    if board is None or base not in board.gated:
        print(f"{row}: needs the {base} row scored in the same run (list it before {row} in --rows); skipped")
        return board
    folder = model_folder(base, args)
    fitted = fit_gate_weight(folder, cells, board.val_ids, args.gate_mosaics, args.seed)
    own, _ = validation_predictions(folder, cells, board.val_ids, args.device)
    entry = {**results["rows"][base], **board.score_row(row, own, fitted["weight"]), "gate_fit": fitted,
             "title": f"{base} model, gate weight fitted on validation mosaics (w = {fitted['weight']})"}
    results["rows"][row] = entry
    print(f"{row}: fitted weight {fitted['weight']}, cell mAP {entry['cell_map_gated']:.3f}")
    return board


def add_comparisons(board: Scoreboard, results: dict) -> None:
    for row, entry in results["rows"].items():
        if row not in board.gated:
            continue
        for reference in ("default", *EXTRA_REFERENCES.get(row, ())):
            paired = board.paired(reference, row)
            if paired is not None:
                entry[f"vs_{reference}"] = paired
        upper = SUPERVISED_OF.get(row, "supervised")
        supervised = results["rows"].get(upper, {}).get("cell_map_gated")
        if supervised:
            entry["ratio_to_supervised"] = entry["cell_map_gated"] / supervised
            entry["supervised_row"] = upper


def _interval(entry: dict, key: str) -> str:
    paired = entry.get(key)
    if not paired:
        return "-"
    low, high = paired["interval"]
    return f"{paired['difference']:+.3f} [{low:+.3f}, {high:+.3f}]"


def _builds_on(entry: dict) -> str:
    """The paired difference with the row a recipe builds on (other than the default and mean), named."""
    for reference in REFERENCES[2:]:
        if f"vs_{reference}" in entry:
            return f"{reference}: {_interval(entry, f'vs_{reference}')}"
    return "-"


def print_table(results: dict) -> None:
    print("\n| row | train s | epochs | cells/s | image macro F1 | cell mAP gated | own | vs default [95% CI] "
          "| vs mean [95% CI] | vs the row it builds on [95% CI] | / supervised |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row, r in results["rows"].items():
        ratio = r.get("ratio_to_supervised")
        print(f"| {row}: {r['title']} | {r.get('train_seconds') or '-'} | {r.get('epochs', '-')} "
              f"| {r.get('train_cells_per_second') or '-'} | {r['image_macro_f1']:.3f} | {r['cell_map_gated']:.3f} "
              f"| {r['cell_map_own_probability']:.3f} | {_interval(r, 'vs_default')} | {_interval(r, 'vs_mean')} "
              f"| {_builds_on(r)} | {'-' if ratio is None else f'{ratio:.2f}'} |")


def main(argv: list[str] | None = None) -> int:
    import logging

    import torch

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    bench_args = argparse.Namespace(out=args.out, images=args.images, seed=args.seed, rows=["attention"],
                                    image_size=256)
    truth, cells, _ = build_caches(bench_args)
    results = json.loads(args.results.read_text()) if args.results.is_file() else {}
    results.setdefault("rows", {})
    board = None
    order = [r for r in ("default", "mean", "supervised") if r in args.rows]
    for row in order + [r for r in args.rows if r not in order]:
        board = run_row(row, args, board, cells, truth, results)
    if board is not None:
        add_comparisons(board, results)
    save_results(results, args)
    print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
