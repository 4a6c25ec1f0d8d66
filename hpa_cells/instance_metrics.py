"""Instance segmentation metrics: IoU matching of label masks and Cellpose-style average precision.

Masks are `H,W` integer label images (0 = background, any positive id = one instance). The IoU
matrix comes from a joint histogram of the two label images; instances are paired one-to-one by
`scipy.optimize.linear_sum_assignment`, preferring pairs at or above the IoU threshold and, among
those, higher IoU (the cost used by Cellpose's `metrics._true_positive`, itself from stardist).
AP at a threshold is TP / (TP + FP + FN).

Unlike Cellpose, instances are counted as the distinct ids present rather than the largest id, so
masks with gaps in their ids score correctly; for consecutive ids (1..N) the two agree exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

logger = logging.getLogger(__name__)

DEFAULT_IOU_THRESHOLDS: tuple[float, ...] = (0.5, 0.75, 0.9)


class MaskMismatchError(ValueError):
    """Two label masks (or mask lists) that should be compared do not fit together."""


@dataclass(frozen=True)
class IoUMatrix:
    """IoU of every (true, predicted) instance pair, with the instance ids along each axis.

    `iou[i, j]` is the IoU of true instance `true_ids[i]` and predicted instance `pred_ids[j]`.
    """

    true_ids: np.ndarray  # (T,) int64, sorted
    pred_ids: np.ndarray  # (P,) int64, sorted
    iou: np.ndarray  # (T, P) float64


@dataclass(frozen=True)
class InstanceMatches:
    """One-to-one matches between true and predicted instances at an IoU threshold.

    Arrays `true_ids`, `pred_ids` and `iou` are aligned: pair k matches true id `true_ids[k]` with
    predicted id `pred_ids[k]` at IoU `iou[k]` (>= the threshold); pairs are sorted by true id.
    The unmatched ids are the false negatives (true) and false positives (predicted).
    """

    true_ids: np.ndarray  # (K,) int64
    pred_ids: np.ndarray  # (K,) int64
    iou: np.ndarray  # (K,) float64
    unmatched_true_ids: np.ndarray  # (T - K,) int64
    unmatched_pred_ids: np.ndarray  # (P - K,) int64
    iou_threshold: float

    def __len__(self) -> int:
        return int(self.true_ids.size)

    @property
    def n_true(self) -> int:
        """Number of true instances."""
        return len(self) + int(self.unmatched_true_ids.size)

    @property
    def n_pred(self) -> int:
        """Number of predicted instances."""
        return len(self) + int(self.unmatched_pred_ids.size)


def _check_label_mask(mask: np.ndarray, what: str) -> np.ndarray:
    """Return `mask` as an `H,W` int64 array, or raise naming `what` when it is not a label image."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise MaskMismatchError(f"{what}: expected an H,W label mask, got shape {mask.shape}")
    if not np.issubdtype(mask.dtype, np.integer):
        raise MaskMismatchError(f"{what}: expected integer instance ids, got dtype {mask.dtype}")
    if mask.size and mask.min() < 0:
        raise MaskMismatchError(f"{what}: instance ids must be >= 0, found {mask.min()}")
    return mask.astype(np.int64, copy=False)


def iou_matrix(true_mask: np.ndarray, pred_mask: np.ndarray) -> IoUMatrix:
    """IoU between every true and predicted instance of two `H,W` label masks (joint histogram)."""
    true_mask = _check_label_mask(true_mask, "true mask")
    pred_mask = _check_label_mask(pred_mask, "predicted mask")
    if true_mask.shape != pred_mask.shape:
        raise MaskMismatchError(
            f"true mask has shape {true_mask.shape} but predicted mask has shape {pred_mask.shape}"
        )
    true_ids, true_index = np.unique(true_mask, return_inverse=True)
    pred_ids, pred_index = np.unique(pred_mask, return_inverse=True)
    # Index 0 stands for background only when id 0 is present; add it when it is not, so that
    # rows/columns 1.. are always the instances.
    if true_ids.size == 0 or true_ids[0] != 0:
        true_ids = np.concatenate([[0], true_ids])
        true_index = true_index + 1
    if pred_ids.size == 0 or pred_ids[0] != 0:
        pred_ids = np.concatenate([[0], pred_ids])
        pred_index = pred_index + 1
    n_t, n_p = true_ids.size, pred_ids.size
    joint = np.bincount(true_index.ravel() * n_p + pred_index.ravel(), minlength=n_t * n_p).reshape(n_t, n_p)
    area_true = joint.sum(axis=1, keepdims=True)
    area_pred = joint.sum(axis=0, keepdims=True)
    union = area_true + area_pred - joint
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, joint / np.maximum(union, 1), 0.0)
    return IoUMatrix(true_ids=true_ids[1:], pred_ids=pred_ids[1:], iou=iou[1:, 1:].astype(np.float64))


def _assign(iou: np.ndarray, iou_threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Row/column indices of the optimal one-to-one pairs with IoU >= threshold (Cellpose cost)."""
    if iou.size == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty
    n_min = min(iou.shape)
    costs = -(iou >= iou_threshold).astype(np.float64) - iou / (2 * n_min)
    rows, cols = linear_sum_assignment(costs)
    ok = iou[rows, cols] >= iou_threshold
    return rows[ok].astype(np.int64), cols[ok].astype(np.int64)


def _check_threshold(iou_threshold: float) -> float:
    threshold = float(iou_threshold)
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"IoU threshold must be in (0, 1], got {iou_threshold}")
    return threshold


def match_instances(true_mask: np.ndarray, pred_mask: np.ndarray, iou_threshold: float) -> InstanceMatches:
    """Pair true and predicted instances one-to-one where their IoU is >= `iou_threshold`.

    The pairing maximises the number of pairs at or above the threshold, then their total IoU.
    """
    threshold = _check_threshold(iou_threshold)
    matrix = iou_matrix(true_mask, pred_mask)
    rows, cols = _assign(matrix.iou, threshold)
    order = np.argsort(matrix.true_ids[rows], kind="stable")
    rows, cols = rows[order], cols[order]
    true_ids, pred_ids = matrix.true_ids[rows], matrix.pred_ids[cols]
    return InstanceMatches(
        true_ids=true_ids,
        pred_ids=pred_ids,
        iou=matrix.iou[rows, cols],
        unmatched_true_ids=np.setdiff1d(matrix.true_ids, true_ids),
        unmatched_pred_ids=np.setdiff1d(matrix.pred_ids, pred_ids),
        iou_threshold=threshold,
    )


def average_precision(
    true_masks: Sequence[np.ndarray],
    pred_masks: Sequence[np.ndarray],
    thresholds: Sequence[float] = DEFAULT_IOU_THRESHOLDS,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-image AP = TP / (TP + FP + FN) at each IoU threshold, as Cellpose's `average_precision`.

    Returns `(ap, tp, fp, fn)`, each of shape `(n_images, n_thresholds)`; `ap` is float64, the
    counts int64. An image with no true and no predicted instance has AP NaN (nothing to score);
    use `np.nanmean` to average. One image alone must still be passed as a one-element list.
    """
    if isinstance(true_masks, np.ndarray) or isinstance(pred_masks, np.ndarray):
        raise TypeError("average_precision takes lists of H,W masks; wrap a single mask as [mask]")
    if len(true_masks) != len(pred_masks):
        raise MaskMismatchError(f"got {len(true_masks)} true masks but {len(pred_masks)} predicted masks")
    levels = [_check_threshold(t) for t in thresholds]
    shape = (len(true_masks), len(levels))
    tp = np.zeros(shape, np.int64)
    n_true = np.zeros(len(true_masks), np.int64)
    n_pred = np.zeros(len(true_masks), np.int64)
    for n, (true_mask, pred_mask) in enumerate(zip(true_masks, pred_masks, strict=True)):
        try:
            matrix = iou_matrix(true_mask, pred_mask)
        except MaskMismatchError as err:
            raise MaskMismatchError(f"image {n}: {err}") from err
        n_true[n], n_pred[n] = matrix.true_ids.size, matrix.pred_ids.size
        for k, level in enumerate(levels):
            tp[n, k] = _assign(matrix.iou, level)[0].size
    fp = n_pred[:, None] - tp
    fn = n_true[:, None] - tp
    denominator = tp + fp + fn
    with np.errstate(divide="ignore", invalid="ignore"):
        ap = np.where(denominator > 0, tp / np.maximum(denominator, 1), np.nan)
    logger.debug("scored %d images at IoU thresholds %s", len(true_masks), levels)
    return ap.astype(np.float64), tp, fp, fn
