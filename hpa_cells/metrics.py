"""Image-level F1 (the 2018 competition metric) and cell-level mAP against per-cell truth.

Image level: per-class F1 of thresholded predictions (NaN for a class absent from both truth and predictions);
macro F1 is the mean over the classes that occur in the truth. Classes absent from the truth are left out, so
false positives on them do not count; when every class occurs (as in the balanced benchmark sets) this equals
the 2018 competition's macro F1 over all 28 classes.

Image level with scores (real fields, few of them): `image_map` is the macro average precision over the classes
with at least `min_positives` positive fields; `bootstrap_image_metrics` gives it, macro F1 over the same classes,
micro F1 over all classes and each class's AP with a bootstrap interval over fields, and
`paired_bootstrap_image_metrics` the difference between two sets of predictions on the same fields.

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
    parts_a, parts_b = (matched_per_image(true_masks, true_cell_labels, pred_masks, probs, num_classes)
                        for probs in (probs_a, probs_b))
    return paired_bootstrap_of_matched(parts_a, parts_b, resamples, seed)


def matched_per_image(
    true_masks: Mapping[str, np.ndarray],
    true_cell_labels: Mapping[str, Mapping[int, Sequence[int]]],
    pred_masks: Mapping[str, np.ndarray],
    probs: Mapping[str, Mapping[int, np.ndarray]],
    num_classes: int = NUM_CLASSES,
) -> list[MatchedCells]:
    """Each image's cells matched to the truth (`match_cells_to_truth`), in the order of `true_masks`: what a
    paired bootstrap resamples; made once per set of predictions when one set is compared with several."""
    return [match_cells_to_truth({i: true_masks[i]}, true_cell_labels, {i: pred_masks[i]}, probs, num_classes)
            for i in true_masks]


def paired_bootstrap_of_matched(parts_a: Sequence[MatchedCells], parts_b: Sequence[MatchedCells],
                                resamples: int = 1000, seed: int = 0) -> PairedBootstrap:
    """`paired_bootstrap_cell_map` of per-image matched cells (`matched_per_image`, the same images in the same
    order for A and B)."""
    if resamples <= 0:
        raise ValueError(f"resamples must be positive, got {resamples}")
    if len(parts_a) != len(parts_b) or not parts_a:
        raise ValueError(f"a paired bootstrap needs the same images for A and B, got {len(parts_a)} and "
                         f"{len(parts_b)}")
    map_a, map_b = _map_of(parts_a), _map_of(parts_b)
    rng = np.random.default_rng(seed)
    differences = np.empty(resamples)
    n = len(parts_a)
    for r in range(resamples):
        draw = rng.integers(0, n, size=n)
        differences[r] = _map_of([parts_b[i] for i in draw]) - _map_of([parts_a[i] for i in draw])
    low, high = np.nanpercentile(differences, [2.5, 97.5])
    return PairedBootstrap(map_a, map_b, map_b - map_a, (float(low), float(high)),
                           float(np.mean(differences > 0)), resamples, n)


# ----- image level with scores, bootstrap intervals over fields ------------------------------------------

IMAGE_METRICS = ("map", "macro_f1", "micro_f1")
"""The keys of `image_metrics`: image mAP and macro F1 over the evaluated classes, micro F1 over all classes."""


def _check_image_arrays(y_true: np.ndarray, *others: np.ndarray) -> np.ndarray:
    """`y_true` as a bool `N,K` array, after checking every other array has its shape."""
    truth = np.asarray(y_true)
    if truth.ndim != 2:
        raise ValueError(f"image truth must be N,K; got shape {truth.shape}")
    for other in others:
        if np.shape(other) != truth.shape:
            raise ValueError(f"truth is {truth.shape} but scores or predictions are {np.shape(other)}")
    return truth.astype(bool)


def evaluable_classes(y_true: np.ndarray, min_positives: int = 3) -> np.ndarray:
    """Indices of the classes with at least `min_positives` positive fields in `N,K` truth."""
    return np.flatnonzero(_check_image_arrays(y_true).sum(axis=0) >= min_positives)


def per_class_average_precision(y_true: np.ndarray, y_score: np.ndarray) -> np.ndarray:
    """`K` APs of `N,K` scores against `N,K` truth (as scikit-learn's `average_precision_score`; ties as
    groups); NaN for a class without positives."""
    truth = _check_image_arrays(y_true, y_score)
    scores = np.asarray(y_score, dtype=np.float64)
    return np.array([average_precision_with_misses(scores[:, c], truth[:, c], int(truth[:, c].sum()))
                     for c in range(truth.shape[1])])


def image_map(y_true: np.ndarray, y_score: np.ndarray, min_positives: int = 3) -> float:
    """Image-level mAP: the mean AP over the classes with at least `min_positives` positive fields (NaN when no
    class has that many)."""
    classes = evaluable_classes(y_true, min_positives)
    if classes.size == 0:
        return float("nan")
    return float(np.mean(per_class_average_precision(y_true, y_score)[classes]))


def micro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """F1 of every (field, class) decision pooled: 2 TP / (2 TP + FP + FN); NaN with no positives at all."""
    truth = _check_image_arrays(y_true, y_pred)
    pred = np.asarray(y_pred).astype(bool)
    tp = int((truth & pred).sum())
    denominator = 2 * tp + int((~truth & pred).sum()) + int((truth & ~pred).sum())
    return 2 * tp / denominator if denominator else float("nan")


def image_metrics(y_true: np.ndarray, y_score: np.ndarray, y_pred: np.ndarray,
                  classes: np.ndarray) -> tuple[dict[str, float], np.ndarray]:
    """({"map", "macro_f1", "micro_f1"}, `K` per-class APs) of one set of predictions. mAP and macro F1 average
    over `classes` (fixed beforehand, e.g. `evaluable_classes` of the whole set), leaving out a class whose AP or
    F1 is undefined here (no positives; for F1 no positives and no predictions); micro F1 pools all classes."""
    truth = _check_image_arrays(y_true, y_score, y_pred)
    ap = per_class_average_precision(truth, y_score)
    f1 = per_class_f1(truth, y_pred)
    chosen_ap, chosen_f1 = ap[classes], f1[classes]
    values = {
        "map": float(np.mean(chosen_ap[~np.isnan(chosen_ap)])) if (~np.isnan(chosen_ap)).any() else float("nan"),
        "macro_f1": float(np.mean(chosen_f1[~np.isnan(chosen_f1)])) if (~np.isnan(chosen_f1)).any() else float("nan"),
        "micro_f1": micro_f1(truth, y_pred),
    }
    return values, ap


@dataclass(frozen=True)
class Interval:
    """A value on all fields and the 2.5th / 97.5th percentiles of it over bootstrap resamples of the fields."""

    value: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}


@dataclass(frozen=True)
class ImageBootstrap:
    """`metrics`: IMAGE_METRICS -> Interval; `per_class_ap`: class id -> Interval for every evaluated class;
    `classes`: the evaluated class ids (>= min_positives positive fields on all fields)."""

    metrics: dict[str, Interval]
    per_class_ap: dict[int, Interval]
    classes: tuple[int, ...]
    resamples: int
    n_fields: int


def _percentiles(samples: np.ndarray) -> tuple[float, float]:
    """The 2.5th and 97.5th percentiles of `samples`, ignoring NaN (resamples where a value is undefined)."""
    if np.isnan(samples).all():
        return float("nan"), float("nan")
    low, high = np.nanpercentile(samples, [2.5, 97.5])
    return float(low), float(high)


def _draws(n_fields: int, resamples: int, seed: int) -> np.ndarray:
    """`resamples, n_fields` field indices drawn with replacement (seeded)."""
    if resamples <= 0:
        raise ValueError(f"resamples must be positive, got {resamples}")
    if n_fields <= 0:
        raise ValueError("a bootstrap needs at least one field")
    return np.random.default_rng(seed).integers(0, n_fields, size=(resamples, n_fields))


def bootstrap_image_metrics(y_true: np.ndarray, y_score: np.ndarray, y_pred: np.ndarray, min_positives: int = 3,
                            resamples: int = 2000, seed: int = 0) -> ImageBootstrap:
    """Image mAP, macro F1 (over the classes with >= `min_positives` positive fields), micro F1 and the per-class
    APs of `N,K` scores and thresholded predictions, each with a 95% bootstrap interval over the `N` fields
    (`resamples` seeded draws with replacement; the evaluated classes stay those of the whole set)."""
    truth = _check_image_arrays(y_true, y_score, y_pred)
    scores, pred = np.asarray(y_score, np.float64), np.asarray(y_pred).astype(bool)
    classes = evaluable_classes(truth, min_positives)
    values, ap = image_metrics(truth, scores, pred, classes)
    samples = {name: np.empty(resamples) for name in IMAGE_METRICS}
    class_samples = np.empty((resamples, classes.size))
    for r, draw in enumerate(_draws(truth.shape[0], resamples, seed)):
        drawn, drawn_ap = image_metrics(truth[draw], scores[draw], pred[draw], classes)
        for name in IMAGE_METRICS:
            samples[name][r] = drawn[name]
        class_samples[r] = drawn_ap[classes]
    metrics = {name: Interval(values[name], *_percentiles(samples[name])) for name in IMAGE_METRICS}
    per_class = {int(c): Interval(float(ap[c]), *_percentiles(class_samples[:, j])) for j, c in enumerate(classes)}
    return ImageBootstrap(metrics, per_class, tuple(int(c) for c in classes), resamples, truth.shape[0])


@dataclass(frozen=True)
class PairedDifference:
    """Metric of predictions A and B on the same fields, B - A, its 95% bootstrap interval, and the share of
    resamples where B is above A."""

    value_a: float
    value_b: float
    difference: float
    low: float
    high: float
    share_b_better: float

    def to_dict(self) -> dict[str, float]:
        return {"a": self.value_a, "b": self.value_b, "difference": self.difference, "low": self.low,
                "high": self.high, "share_b_better": self.share_b_better}


def paired_bootstrap_image_metrics(y_true: np.ndarray, a: tuple[np.ndarray, np.ndarray],
                                   b: tuple[np.ndarray, np.ndarray], min_positives: int = 3, resamples: int = 2000,
                                   seed: int = 0) -> dict[str, PairedDifference]:
    """Is B above A beyond chance? `a` and `b` are (`N,K` scores, `N,K` thresholded predictions) on the same
    fields; each resample draws the same fields for both. Returns IMAGE_METRICS -> PairedDifference."""
    truth = _check_image_arrays(y_true, *a, *b)
    classes = evaluable_classes(truth, min_positives)
    arrays = [(np.asarray(s, np.float64), np.asarray(p).astype(bool)) for s, p in (a, b)]
    whole = [image_metrics(truth, s, p, classes)[0] for s, p in arrays]
    differences = {name: np.empty(resamples) for name in IMAGE_METRICS}
    for r, draw in enumerate(_draws(truth.shape[0], resamples, seed)):
        drawn = [image_metrics(truth[draw], s[draw], p[draw], classes)[0] for s, p in arrays]
        for name in IMAGE_METRICS:
            differences[name][r] = drawn[1][name] - drawn[0][name]
    out = {}
    for name in IMAGE_METRICS:
        valid = differences[name][~np.isnan(differences[name])]
        out[name] = PairedDifference(whole[0][name], whole[1][name], whole[1][name] - whole[0][name],
                                     *_percentiles(differences[name]),
                                     float(np.mean(valid > 0)) if valid.size else float("nan"))
    return out
