"""IoU matching and Cellpose-style average precision on hand-built masks with known IoUs."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from hpa_cells.instance_metrics import (
    MaskMismatchError,
    average_precision,
    iou_matrix,
    match_instances,
)


def _two_squares() -> tuple[np.ndarray, np.ndarray]:
    """True: squares 1 and 2 (10x10). Pred: square 1 exact (IoU 1), square 2 shifted 2 px (IoU 80/120)."""
    true = np.zeros((30, 40), np.int32)
    true[2:12, 2:12] = 1
    true[15:25, 20:30] = 2
    pred = np.zeros_like(true)
    pred[2:12, 2:12] = 1
    pred[15:25, 22:32] = 2
    return true, pred


def test_iou_matrix_values_are_exact() -> None:
    true, pred = _two_squares()
    matrix = iou_matrix(true, pred)
    assert matrix.true_ids.tolist() == [1, 2]
    assert matrix.pred_ids.tolist() == [1, 2]
    np.testing.assert_allclose(matrix.iou, [[1.0, 0.0], [0.0, 80 / 120]])


def test_average_precision_at_each_threshold() -> None:
    true, pred = _two_squares()
    ap, tp, fp, fn = average_precision([true], [pred], thresholds=(0.5, 0.75, 0.9))
    assert ap.shape == tp.shape == fp.shape == fn.shape == (1, 3)
    assert tp.tolist() == [[2, 1, 1]]
    assert fp.tolist() == [[0, 1, 1]]
    assert fn.tolist() == [[0, 1, 1]]
    np.testing.assert_allclose(ap, [[1.0, 1 / 3, 1 / 3]])


def test_average_precision_counts_unmatched_and_extra_instances() -> None:
    true, pred = _two_squares()
    pred = pred.copy()
    pred[pred == 2] = 0  # miss true square 2
    pred[26:30, 0:4] = 7  # an extra prediction over background
    ap, tp, fp, fn = average_precision([true], [pred], thresholds=(0.5,))
    assert (tp[0, 0], fp[0, 0], fn[0, 0]) == (1, 1, 1)
    assert ap[0, 0] == pytest.approx(1 / 3)


def test_matching_is_optimal_not_greedy() -> None:
    """Greedy highest-IoU-first would pair A with Y (0.4) and leave B unmatched; the optimum pairs A-X, B-Y."""
    true = np.zeros((10, 40), np.int32)
    true[:, 0:10] = 1  # A
    true[:, 10:20] = 2  # B
    pred = np.zeros_like(true)
    pred[:, 0:3] = 1  # X: IoU with A = 30/100
    pred[:, 4:15] = 2  # Y: IoU with A = 60/150 = 0.4, with B = 50/160 = 0.3125
    matches = match_instances(true, pred, iou_threshold=0.25)
    assert matches.true_ids.tolist() == [1, 2]
    assert matches.pred_ids.tolist() == [1, 2]
    np.testing.assert_allclose(matches.iou, [0.3, 50 / 160])
    _, tp, _, _ = average_precision([true], [pred], thresholds=(0.25,))
    assert tp[0, 0] == 2


def test_match_instances_keeps_original_ids_and_lists_unmatched() -> None:
    true = np.zeros((20, 20), np.uint16)
    true[0:5, 0:5] = 9
    true[10:15, 10:15] = 3
    true[0:4, 15:19] = 12
    pred = np.zeros((20, 20), np.int64)
    pred[0:5, 0:5] = 200  # matches true 9, IoU 1
    pred[10:15, 11:16] = 4  # matches true 3, IoU 20/30
    pred[16:20, 0:4] = 1  # nothing there
    matches = match_instances(true, pred, iou_threshold=0.6)
    assert len(matches) == 2
    assert matches.true_ids.tolist() == [3, 9]
    assert matches.pred_ids.tolist() == [4, 200]
    np.testing.assert_allclose(matches.iou, [20 / 30, 1.0])
    assert matches.unmatched_true_ids.tolist() == [12]
    assert matches.unmatched_pred_ids.tolist() == [1]
    assert (matches.n_true, matches.n_pred) == (3, 3)
    assert len(match_instances(true, pred, iou_threshold=0.7)) == 1


def test_instances_are_counted_by_distinct_ids_not_the_largest_id() -> None:
    true = np.zeros((10, 10), np.int32)
    true[0:3, 0:3] = 50
    pred = np.zeros_like(true)
    pred[0:3, 0:3] = 1
    ap, tp, fp, fn = average_precision([true], [pred], thresholds=(0.5,))
    assert (tp[0, 0], fp[0, 0], fn[0, 0], ap[0, 0]) == (1, 0, 0, 1.0)


def test_empty_prediction_gives_zero_ap_and_all_false_negatives() -> None:
    true, _ = _two_squares()
    ap, tp, fp, fn = average_precision([true], [np.zeros_like(true)])
    assert ap.tolist() == [[0.0, 0.0, 0.0]]
    assert tp.tolist() == [[0, 0, 0]] and fp.tolist() == [[0, 0, 0]] and fn.tolist() == [[2, 2, 2]]


def test_empty_truth_gives_zero_ap_and_all_false_positives() -> None:
    _, pred = _two_squares()
    ap, tp, fp, fn = average_precision([np.zeros_like(pred)], [pred], thresholds=(0.5,))
    assert (ap[0, 0], tp[0, 0], fp[0, 0], fn[0, 0]) == (0.0, 0, 2, 0)
    assert match_instances(np.zeros_like(pred), pred, 0.5).unmatched_pred_ids.tolist() == [1, 2]


def test_both_empty_gives_nan_ap_and_zero_counts() -> None:
    empty = np.zeros((8, 8), np.int32)
    ap, tp, fp, fn = average_precision([empty, empty], [empty, empty], thresholds=(0.5,))
    assert np.isnan(ap).all()
    assert tp.sum() == fp.sum() == fn.sum() == 0
    assert len(match_instances(empty, empty, 0.5)) == 0


def test_several_images_are_scored_independently() -> None:
    true, pred = _two_squares()
    ap, _, _, _ = average_precision([true, true], [pred, true], thresholds=(0.75,))
    np.testing.assert_allclose(ap, [[1 / 3], [1.0]])


def test_mismatched_inputs_raise_errors_naming_the_problem() -> None:
    true, pred = _two_squares()
    with pytest.raises(MaskMismatchError, match="got 2 true masks but 1 predicted masks"):
        average_precision([true, true], [pred])
    with pytest.raises(
        MaskMismatchError,
        match=r"image 1: true mask has shape \(30, 40\) but predicted mask has shape \(30, 39\)",
    ):
        average_precision([true, true], [pred, pred[:, :-1]])
    with pytest.raises(TypeError, match="wrap a single mask"):
        average_precision(true, pred)
    with pytest.raises(
        MaskMismatchError, match="predicted mask: expected integer instance ids, got dtype float64"
    ):
        iou_matrix(true, pred.astype(float))
    with pytest.raises(ValueError, match=r"IoU threshold must be in \(0, 1\], got 1.5"):
        match_instances(true, pred, 1.5)


def _random_instances(rng: np.random.Generator, shape: tuple[int, int], n: int) -> np.ndarray:
    """`H,W` mask of up to n random ellipses (later ones paint over earlier), ids renumbered 1..K."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    mask = np.zeros(shape, np.int32)
    for label in range(1, n + 1):
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        ry, rx = rng.uniform(4, 14, size=2)
        mask[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = label
    ids = np.unique(mask[mask > 0])
    lookup = np.zeros(n + 1, np.int32)
    lookup[ids] = np.arange(1, ids.size + 1)
    return lookup[mask]


@pytest.mark.slow
@pytest.mark.filterwarnings(
    "ignore:invalid value encountered in divide:RuntimeWarning"
)  # cellpose on empty pairs
@pytest.mark.skipif(importlib.util.find_spec("cellpose") is None, reason="cellpose is not installed")
def test_matches_cellpose_average_precision_on_random_shifted_masks() -> None:
    """Slow only because importing cellpose.metrics (numba, torch) takes 10-20 s."""
    cellpose_metrics = pytest.importorskip("cellpose.metrics", reason="cellpose.metrics is not importable")
    rng = np.random.default_rng(20240601)
    trues, preds = [], []
    for _ in range(25):
        true = _random_instances(rng, (96, 128), int(rng.integers(0, 25)))
        shifted = np.roll(true, tuple(rng.integers(-4, 5, size=2)), axis=(0, 1))
        dropped = rng.choice(np.arange(1, shifted.max() + 1), size=shifted.max() // 4, replace=False)
        shifted[np.isin(shifted, dropped)] = 0
        ids = np.unique(shifted[shifted > 0])
        lookup = np.zeros(int(shifted.max()) + 1, np.int32)
        lookup[ids] = np.arange(1, ids.size + 1)
        trues.append(true)
        preds.append(lookup[shifted])
    thresholds = [0.3, 0.5, 0.75, 0.9]
    ours = average_precision(trues, preds, thresholds=thresholds)
    theirs = cellpose_metrics.average_precision(trues, preds, threshold=thresholds)
    for name, mine, reference in zip(("tp", "fp", "fn"), ours[1:], theirs[1:], strict=True):
        np.testing.assert_array_equal(mine, reference.astype(np.int64), err_msg=name)
    defined = np.isfinite(ours[0])
    np.testing.assert_array_equal(
        defined, np.isfinite(theirs[0])
    )  # both NaN exactly where both masks are empty
    np.testing.assert_allclose(ours[0][defined], theirs[0][defined], rtol=1e-6)
    assert ours[1].sum() > 50  # the comparison exercised real matches
