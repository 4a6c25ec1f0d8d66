"""The report's own scores of a prediction run: image-level F1 against image labels (`image_scores`) and
cell-level precision-recall curves against per-cell truth (`cell_curves`, true masks read from a truth folder).

Kept apart in one module so that it can be replaced by the shared scoring of prediction folders
(`hpa_cells.scoring`) without touching the pages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpa_cells.classes import CLASS_NAMES, NUM_CLASSES
from hpa_cells.labels import read_labels, to_multi_hot
from hpa_cells.maps import PredictionRun
from hpa_cells.metrics import (
    CELL_MATCH_IOU,
    average_precision_with_misses,
    match_cells_to_truth,
    per_class_f1,
    read_cell_truth,
    read_true_cell_mask,
)


@dataclass(frozen=True)
class ClassCurve:
    """Cell-level precision-recall curve of one class (points by decreasing score) and its AP."""

    precision: np.ndarray
    recall: np.ndarray
    average_precision: float
    n_positives: int


@dataclass(frozen=True)
class CellCurves:
    """Per-class curves (classes some true cell carries) and the matching totals."""

    curves: dict[int, ClassCurve]
    n_true_cells: int
    n_matched_cells: int
    n_pred_cells: int

    @property
    def mean_ap(self) -> float:
        values = [c.average_precision for c in self.curves.values()]
        return float(np.mean(values)) if values else float("nan")


def cell_curves(run: PredictionRun, truth_dir: Path, iou_threshold: float = CELL_MATCH_IOU) -> CellCurves:
    """Cell-level PR curves of every image of `run` that has per-cell truth in `truth_dir`."""
    truth = read_cell_truth(truth_dir)
    true_masks, pred_masks, probs = {}, {}, {}
    for image_id in run.image_ids:
        if image_id not in truth:
            continue
        pred_masks[image_id], _ = run.cache.full_masks(image_id)
        true_masks[image_id] = read_true_cell_mask(truth_dir, image_id, pred_masks[image_id].shape)
        cells = run.cells[run.cells["image_id"] == image_id]
        rows = cells[list(CLASS_NAMES)].to_numpy(dtype=np.float64)
        probs[image_id] = dict(zip(cells["cell_id"].astype(int), rows, strict=True))
    matched = match_cells_to_truth(true_masks, truth, pred_masks, probs, NUM_CLASSES, iou_threshold)
    curves: dict[int, ClassCurve] = {}
    for c in np.flatnonzero(matched.positives):
        order = np.argsort(-matched.scores[:, c], kind="stable")
        tp = np.cumsum(matched.hits[order, c])
        precision = tp / np.arange(1, len(order) + 1)
        recall = tp / matched.positives[c]
        ap = average_precision_with_misses(matched.scores[:, c], matched.hits[:, c], int(matched.positives[c]))
        curves[int(c)] = ClassCurve(precision, recall, ap, int(matched.positives[c]))
    return CellCurves(curves, matched.n_true_cells, matched.n_matched_cells, matched.n_pred_cells)


@dataclass(frozen=True)
class ImageScores:
    """Image-level F1 per class (NaN where a class is absent from truth and predictions) on labelled images."""

    f1: np.ndarray
    n_labelled: np.ndarray
    n_images: int
    source: str

    @property
    def macro_f1(self) -> float:
        present = self.n_labelled > 0
        return float(np.nanmean(self.f1[present])) if present.any() else float("nan")


def image_scores(run: PredictionRun, labels: Mapping[str, Sequence[int]], source: str) -> ImageScores | None:
    """F1 of the run's thresholded predictions against `labels` on the images that have labels (None if none)."""
    scored = run.images[run.images["image_id"].isin(list(labels))]
    if scored.empty:
        return None
    y_true = to_multi_hot([labels[i] for i in scored["image_id"]])
    y_pred = to_multi_hot(scored["predicted_ids"])
    return ImageScores(per_class_f1(y_true, y_pred), y_true.sum(axis=0), len(scored), source)


def labels_for(run: PredictionRun, labels_path: Path | None) -> tuple[dict[str, tuple[int, ...]], str]:
    """(image labels, where they come from): the labels CSV when given, else the labels stored in the cell
    cache."""
    if labels_path is not None:
        return {k: tuple(v) for k, v in read_labels(labels_path).items()}, f"labels file {labels_path}"
    return dict(run.cache_labels), "labels stored in the cell cache"
