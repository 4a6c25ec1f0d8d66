"""Image-level F1 (the 2018 competition metric) and cell-level mAP against per-cell truth.

Image level: per-class F1 of thresholded predictions (NaN for a class absent from both truth and predictions);
macro F1 is the mean over the classes that occur in the truth. Classes absent from the truth are left out, so
false positives on them do not count; when every class occurs (as in the balanced benchmark sets) this equals
the 2018 competition's macro F1 over all 28 classes.

Cell level (synthetic data, where every cell's labels are known): predicted cells are matched one-to-one to
true cells at IoU >= 0.6; for each class, a ranked list is scored where a matched predicted cell is a hit when its
true cell carries the class, an unmatched predicted cell is a false positive, and an unmatched true cell carrying
the class is a miss that no threshold can recover (so segmentation errors lower recall). AP is the area under
that precision-recall curve (step interpolation, as scikit-learn's `average_precision_score`); cell mAP is the
mean over classes that some true cell carries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hpa_cells.classes import NUM_CLASSES

CELL_MATCH_IOU = 0.6


def per_class_f1(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """`K` F1 scores of `N,K` binary truth and predictions; NaN where a class is absent from both."""
    y_true = np.asarray(y_true).astype(bool)
    y_pred = np.asarray(y_pred).astype(bool)
    if y_true.shape != y_pred.shape or y_true.ndim != 2:
        raise ValueError(f"truth and predictions must both be N,K; got {y_true.shape} and {y_pred.shape}")
    tp = (y_true & y_pred).sum(axis=0).astype(np.float64)
    fp = (~y_true & y_pred).sum(axis=0)
    fn = (y_true & ~y_pred).sum(axis=0)
    denominator = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, 2 * tp / denominator, np.nan)


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean F1 over the classes present in the truth."""
    scores = per_class_f1(y_true, y_pred)
    present = np.asarray(y_true).astype(bool).any(axis=0)
    return float(np.mean(scores[present])) if present.any() else float("nan")


def average_precision_with_misses(scores: np.ndarray, hits: np.ndarray, n_positives: int) -> float:
    """AP of a ranked list where `n_positives` may exceed the hits in the list (misses never retrieved).

    `scores` and `hits` describe the retrieved items. Precision and recall are taken at the end of each group of
    equal scores (each distinct threshold), as in scikit-learn, so the order within ties does not matter.
    Returns NaN when there are no positives.
    """
    if n_positives <= 0:
        return float("nan")
    scores = np.asarray(scores, dtype=np.float64)
    hits = np.asarray(hits, dtype=bool)
    order = np.lexsort((hits, -scores))  # by score descending; within ties, negatives (False) first
    hits = hits[order]
    scores = scores[order]
    tp = np.cumsum(hits)
    fp = np.cumsum(~hits)
    # evaluate at the last item of each run of equal scores (thresholds), as scikit-learn does
    last_of_tie = np.r_[scores[1:] != scores[:-1], True] if scores.size else np.zeros(0, bool)
    tp, fp = tp[last_of_tie], fp[last_of_tie]
    precision = tp / np.maximum(tp + fp, 1)
    recall = tp / n_positives
    previous = np.r_[0.0, recall[:-1]]
    return float(np.sum((recall - previous) * precision))


@dataclass(frozen=True)
class ClassCurve:
    """Cell-level precision-recall curve of one class (points by decreasing score) and its AP."""

    precision: np.ndarray
    recall: np.ndarray
    average_precision: float
    n_positives: int


def class_curve(scores: np.ndarray, hits: np.ndarray, n_positives: int) -> ClassCurve:
    """The precision-recall curve of one class's ranked items (one point per item, by decreasing score; ties in
    their given order) and its AP (`average_precision_with_misses`, which scores ties as groups)."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    tp = np.cumsum(np.asarray(hits, dtype=bool)[order])
    precision = tp / np.arange(1, len(order) + 1)
    recall = tp / n_positives
    return ClassCurve(precision, recall, average_precision_with_misses(scores, hits, n_positives), int(n_positives))


class TruthFolderError(ValueError):
    """A per-cell truth folder (synthetic output) that lacks cells.csv, a column or a mask; names the file."""


def parse_cell_label_csv(path: Path, error: type[ValueError] = TruthFolderError
                         ) -> dict[str, dict[int, tuple[int, ...]]]:
    """image id -> {cell id: class ids} from a per-cell label CSV (columns image_id, cell_id, labels:
    space-separated 2018 class ids, empty = none), e.g. a synthetic folder's cells.csv. Errors are `error`
    instances naming the file, and the line for a bad label field or class id."""
    frame = pd.read_csv(path, dtype={"image_id": str, "labels": str}, keep_default_na=False)
    missing = [c for c in ("image_id", "cell_id", "labels") if c not in frame.columns]
    if missing:
        raise error(f"{path}: missing columns {missing} (need image_id, cell_id, labels)")
    out: dict[str, dict[int, tuple[int, ...]]] = {}
    for line, (image_id, cell_id, labels) in enumerate(
            zip(frame["image_id"], frame["cell_id"], frame["labels"], strict=True), start=2):
        try:
            classes = tuple(int(x) for x in str(labels).split())
        except ValueError:
            raise error(f"{path}, line {line}: labels {labels!r} are not space-separated class ids") from None
        bad = [c for c in classes if not 0 <= c < NUM_CLASSES]
        if bad:
            raise error(f"{path}, line {line}: class ids {bad} are outside 0..{NUM_CLASSES - 1}")
        out.setdefault(str(image_id), {})[int(cell_id)] = classes
    return out


def read_cell_truth(truth_dir: Path) -> dict[str, dict[int, tuple[int, ...]]]:
    """A synthetic folder's cells.csv -> image id -> {cell id: class ids}."""
    path = truth_dir / "cells.csv"
    if not path.is_file():
        raise TruthFolderError(f"{truth_dir} has no cells.csv with per-cell truth")
    return parse_cell_label_csv(path, TruthFolderError)


def read_true_cell_mask(truth_dir: Path, image_id: str, shape_hw: tuple[int, int]) -> np.ndarray:
    """An image's true cell mask (`{image_id}_cells.png`), resized (nearest) to `shape_hw` when it differs."""
    from hpa_cells.images import read_label_mask, resize_mask

    mask_path = truth_dir / f"{image_id}_cells.png"
    if not mask_path.is_file():
        raise TruthFolderError(f"{truth_dir}: no true cell mask {mask_path.name} for image {image_id}")
    mask = read_label_mask(mask_path)
    return resize_mask(mask, tuple(shape_hw)) if mask.shape != tuple(shape_hw) else mask


@dataclass(frozen=True)
class MatchedCells:
    """Every predicted cell as a scored item: `scores` `N,K` probabilities, `hits` `N,K` (its matched true cell
    carries the class), `positives` `K` (true cells carrying each class, matched or not), and the counts."""

    scores: np.ndarray
    hits: np.ndarray
    positives: np.ndarray
    n_true_cells: int
    n_matched_cells: int
    n_pred_cells: int


@dataclass(frozen=True)
class CellMAP:
    """Cell-level mAP and its parts."""

    mean_ap: float
    per_class_ap: np.ndarray
    """`K` APs, NaN for classes no true cell carries."""
    n_true_cells: int
    n_matched_cells: int
    n_pred_cells: int


def match_cells_to_truth(
    true_masks: Mapping[str, np.ndarray],
    true_cell_labels: Mapping[str, Mapping[int, Sequence[int]]],
    pred_masks: Mapping[str, np.ndarray],
    pred_cell_probs: Mapping[str, Mapping[int, np.ndarray]],
    num_classes: int = NUM_CLASSES,
    iou_threshold: float = CELL_MATCH_IOU,
) -> MatchedCells:
    """Match predicted cells to true cells image by image (IoU >= `iou_threshold`, one-to-one) and score them.

    true_masks / pred_masks: image id -> `H,W` instance mask (same shape per image).
    true_cell_labels: image id -> {true cell id: class ids}. pred_cell_probs: image id -> {pred cell id: `K` probs};
    every predicted cell in a mask needs probabilities (a cell left out of the table counts with probability 0).
    """
    from hpa_cells.instance_metrics import match_instances

    scores: list[np.ndarray] = []
    hits: list[np.ndarray] = []
    positives = np.zeros(num_classes, dtype=np.int64)
    n_true = n_matched = n_pred = 0
    for image_id, true_mask in true_masks.items():
        if image_id not in pred_masks:
            raise KeyError(f"image {image_id!r} has a true mask but no predicted mask")
        labels = true_cell_labels.get(image_id, {})
        probs = pred_cell_probs.get(image_id, {})
        matches = match_instances(true_mask, pred_masks[image_id], iou_threshold)
        truth_of = {int(p): int(t) for t, p in zip(matches.true_ids, matches.pred_ids, strict=True)}
        true_ids = np.union1d(matches.true_ids, matches.unmatched_true_ids)
        for t in true_ids:
            for c in labels.get(int(t), ()):
                positives[c] += 1
        pred_ids = np.union1d(matches.pred_ids, matches.unmatched_pred_ids)
        n_true += int(true_ids.size)
        n_pred += int(pred_ids.size)
        n_matched += len(matches)
        for p in pred_ids:
            p = int(p)
            row = np.asarray(probs.get(p, np.zeros(num_classes)), dtype=np.float64)
            if row.shape != (num_classes,):
                raise ValueError(f"image {image_id!r}, predicted cell {p}: expected {num_classes} probabilities")
            target = np.zeros(num_classes, dtype=bool)
            if p in truth_of:
                target[list(labels.get(truth_of[p], ()))] = True
            scores.append(row)
            hits.append(target)
    score_matrix = np.vstack(scores) if scores else np.zeros((0, num_classes))
    hit_matrix = np.vstack(hits) if hits else np.zeros((0, num_classes), bool)
    return MatchedCells(score_matrix, hit_matrix, positives, n_true, n_matched, n_pred)


def cell_level_map(
    true_masks: Mapping[str, np.ndarray],
    true_cell_labels: Mapping[str, Mapping[int, Sequence[int]]],
    pred_masks: Mapping[str, np.ndarray],
    pred_cell_probs: Mapping[str, Mapping[int, np.ndarray]],
    num_classes: int = NUM_CLASSES,
    iou_threshold: float = CELL_MATCH_IOU,
) -> CellMAP:
    """Cell-level mAP over images (see the module docstring and `match_cells_to_truth` for the arguments)."""
    matched = match_cells_to_truth(true_masks, true_cell_labels, pred_masks, pred_cell_probs, num_classes,
                                   iou_threshold)
    return cell_map_of(matched)


def cell_map_of(matched: MatchedCells) -> CellMAP:
    """Cell-level mAP of cells already matched to the truth (`match_cells_to_truth`)."""
    mean_ap, per_class = _mean_ap(matched.scores, matched.hits, matched.positives)
    return CellMAP(mean_ap, per_class, matched.n_true_cells, matched.n_matched_cells, matched.n_pred_cells)


def _mean_ap(scores: np.ndarray, hits: np.ndarray, positives: np.ndarray) -> tuple[float, np.ndarray]:
    """(mean over the classes with positives, `K` per-class APs with NaN where none) of scored items `N,K`."""
    per_class = np.array([average_precision_with_misses(scores[:, c], hits[:, c], int(positives[c]))
                          for c in range(len(positives))])
    present = positives > 0
    return (float(np.mean(per_class[present])) if present.any() else float("nan")), per_class


def _map_of(parts: Sequence[MatchedCells]) -> float:
    """Cell mAP of several images' matched cells together."""
    return _mean_ap(np.concatenate([p.scores for p in parts]), np.concatenate([p.hits for p in parts]),
                    np.sum([p.positives for p in parts], axis=0))[0]


@dataclass(frozen=True)
class PairedBootstrap:
    """Cell mAP of predictions A and B on the same images, and the bootstrap distribution of B - A.

    difference: B - A on all images; interval: the 2.5th and 97.5th percentiles of B - A over image resamples;
    share_b_better: the fraction of resamples where B > A."""

    map_a: float
    map_b: float
    difference: float
    interval: tuple[float, float]
    share_b_better: float
    resamples: int
    n_images: int


def paired_bootstrap_cell_map(
    true_masks: Mapping[str, np.ndarray],
    true_cell_labels: Mapping[str, Mapping[int, Sequence[int]]],
    pred_masks: Mapping[str, np.ndarray],
    probs_a: Mapping[str, Mapping[int, np.ndarray]],
    probs_b: Mapping[str, Mapping[int, np.ndarray]],
    resamples: int = 1000,
    seed: int = 0,
    num_classes: int = NUM_CLASSES,
) -> PairedBootstrap:
    """Is B's cell mAP above A's beyond chance? Images are drawn with replacement (the same draws for A and B) and
    both are rescored on each draw; cells are matched to the truth once per image (as `cell_level_map`)."""
    if resamples <= 0:
        raise ValueError(f"resamples must be positive, got {resamples}")
    image_ids = list(true_masks)
    if not image_ids:
        raise ValueError("a paired bootstrap needs at least one image")
    parts = {}
    for name, probs in (("a", probs_a), ("b", probs_b)):
        parts[name] = [match_cells_to_truth({i: true_masks[i]}, true_cell_labels, {i: pred_masks[i]}, probs,
                                            num_classes) for i in image_ids]
    map_a, map_b = _map_of(parts["a"]), _map_of(parts["b"])
    rng = np.random.default_rng(seed)
    differences = np.empty(resamples)
    for r in range(resamples):
        draw = rng.integers(0, len(image_ids), size=len(image_ids))
        differences[r] = _map_of([parts["b"][i] for i in draw]) - _map_of([parts["a"][i] for i in draw])
    low, high = np.nanpercentile(differences, [2.5, 97.5])
    return PairedBootstrap(map_a, map_b, map_b - map_a, (float(low), float(high)),
                           float(np.mean(differences > 0)), resamples, len(image_ids))
