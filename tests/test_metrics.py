"""Image-level F1 and cell-level mAP (IoU >= 0.6 matching) on hand-made cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score

from hpa_cells.classes import NUM_CLASSES
from hpa_cells.metrics import (
    CELL_MATCH_IOU,
    average_precision_with_misses,
    cell_level_map,
    macro_f1,
    paired_bootstrap_cell_map,
    per_class_f1,
)

# ----- image level --------------------------------------------------------------------------------------


def test_per_class_f1_by_hand() -> None:
    y_true = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]])
    y_pred = np.array([[1, 1, 0, 0], [0, 1, 0, 1], [0, 0, 0, 0]])
    scores = per_class_f1(y_true, y_pred)
    np.testing.assert_allclose(scores[:2], [2 / 3, 2 / 3])
    assert np.isnan(scores[2])  # absent from truth and predictions
    assert scores[3] == 0.0  # predicted but absent from truth: a false positive, F1 0
    np.testing.assert_allclose(scores[[0, 1, 3]], f1_score(y_true, y_pred, average=None, zero_division=0)[[0, 1, 3]])


def test_macro_f1_averages_classes_present_in_the_truth() -> None:
    y_true = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]])
    y_pred = np.array([[1, 1, 0, 0], [0, 1, 0, 1], [0, 0, 0, 0]])
    assert macro_f1(y_true, y_pred) == pytest.approx(2 / 3)  # class 3 (absent from truth) is left out
    assert macro_f1(y_true, y_true) == 1.0
    assert np.isnan(macro_f1(np.zeros((2, 3)), np.ones((2, 3))))


def test_f1_shape_error() -> None:
    with pytest.raises(ValueError, match=r"must both be N,K; got \(3, 4\) and \(3, 2\)"):
        per_class_f1(np.zeros((3, 4)), np.zeros((3, 2)))


# ----- average precision with misses ---------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_ap_without_misses_equals_sklearn_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    hits = rng.random(200) < 0.3
    scores = np.round(rng.random(200) * 0.6 + 0.4 * hits, 1)  # one decimal: many ties, mixed labels in a tie
    assert len(np.unique(scores)) < 20
    expected = average_precision_score(hits, scores)
    assert average_precision_with_misses(scores, hits, int(hits.sum())) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_misses_scale_ap_by_the_retrieved_fraction(seed: int) -> None:
    rng = np.random.default_rng(10 + seed)
    hits = rng.random(100) < 0.4
    scores = np.round(rng.random(100), 2)
    misses = 7
    positives = int(hits.sum()) + misses
    expected = average_precision_score(hits, scores) * hits.sum() / positives
    assert average_precision_with_misses(scores, hits, positives) == pytest.approx(expected, abs=1e-12)


def test_ap_with_misses_by_hand() -> None:
    # ranked: hit (P 1, R 1/4), false positive, hit (P 2/3, R 2/4); two positives never retrieved
    ap = average_precision_with_misses(np.array([0.9, 0.8, 0.7]), np.array([True, False, True]), 4)
    assert ap == pytest.approx(0.25 * 1 + 0.25 * 2 / 3)
    assert average_precision_with_misses(np.array([0.5, 0.4]), np.array([False, False]), 3) == 0.0
    assert average_precision_with_misses(np.zeros(0), np.zeros(0, bool), 2) == 0.0
    assert np.isnan(average_precision_with_misses(np.array([0.5]), np.array([False]), 0))


def test_tied_scores_are_not_ranked_in_favour_of_hits() -> None:
    # a hit tied with a false positive counts as one threshold: precision 1/2, whatever the input order
    for order in ([True, False], [False, True]):
        assert average_precision_with_misses(np.array([0.5, 0.5]), np.array(order), 1) == pytest.approx(0.5)


# ----- cell-level mAP -------------------------------------------------------------------------------------

K = 3


def _two_cells() -> np.ndarray:
    """10x10 true mask: cell 1 = rows 0-4, cell 2 = rows 5-9 (50 px each)."""
    mask = np.zeros((10, 10), dtype=np.int32)
    mask[:5] = 1
    mask[5:] = 2
    return mask


def _probs(**cells: list[float]) -> dict[int, np.ndarray]:
    return {int(key[1:]): np.array(values) for key, values in cells.items()}


def test_perfect_cell_predictions_score_one() -> None:
    truth = _two_cells()
    pred = np.where(truth == 1, 7, np.where(truth == 2, 9, 0))  # other ids, same cells
    result = cell_level_map({"a": truth}, {"a": {1: [0], 2: [1]}}, {"a": pred},
                            {"a": _probs(c7=[0.9, 0.1, 0.2], c9=[0.2, 0.8, 0.1])}, num_classes=K)
    assert result.mean_ap == 1.0
    np.testing.assert_array_equal(result.per_class_ap[:2], [1.0, 1.0])
    assert np.isnan(result.per_class_ap[2])  # no true cell carries class 2
    assert (result.n_true_cells, result.n_matched_cells, result.n_pred_cells) == (2, 2, 2)


def test_a_missed_true_cell_lowers_recall() -> None:
    truth = _two_cells()
    pred = np.where(truth == 1, 1, 0)  # cell 2 not segmented
    result = cell_level_map({"a": truth}, {"a": {1: [0], 2: [0]}}, {"a": pred},
                            {"a": _probs(c1=[0.9, 0.0, 0.0])}, num_classes=K)
    assert result.per_class_ap[0] == pytest.approx(0.5)  # precision 1 up to recall 1/2, then nothing
    assert result.mean_ap == pytest.approx(0.5)
    assert (result.n_true_cells, result.n_matched_cells, result.n_pred_cells) == (2, 1, 1)


def test_an_unmatched_predicted_cell_is_a_false_positive() -> None:
    truth = np.zeros((10, 10), dtype=np.int32)
    truth[:5] = 1
    pred = truth.copy()
    pred[7:, :5] = 2  # a predicted cell on background
    result = cell_level_map({"a": truth}, {"a": {1: [0]}}, {"a": pred},
                            {"a": _probs(c1=[0.9, 0, 0], c2=[0.95, 0, 0])}, num_classes=K)
    assert result.per_class_ap[0] == pytest.approx(0.5)  # the false positive ranks first
    assert (result.n_true_cells, result.n_matched_cells, result.n_pred_cells) == (1, 1, 2)
    ranked_below = cell_level_map({"a": truth}, {"a": {1: [0]}}, {"a": pred},
                                  {"a": _probs(c1=[0.9, 0, 0], c2=[0.1, 0, 0])}, num_classes=K)
    assert ranked_below.per_class_ap[0] == 1.0


def test_matching_needs_iou_of_at_least_0_6() -> None:
    assert CELL_MATCH_IOU == 0.6
    truth = np.zeros((10, 10), dtype=np.int32)
    truth[:5] = 1  # 50 px
    at_threshold = np.zeros_like(truth)
    at_threshold[:3] = 1  # 30 px inside: IoU 0.6
    below = np.zeros_like(truth)
    below[:5, :5] = 1  # 25 px inside: IoU 0.5
    labels, probs = {"a": {1: [0]}}, {"a": _probs(c1=[0.9, 0, 0])}
    matched = cell_level_map({"a": truth}, labels, {"a": at_threshold}, probs, num_classes=K)
    assert matched.n_matched_cells == 1 and matched.mean_ap == 1.0
    unmatched = cell_level_map({"a": truth}, labels, {"a": below}, probs, num_classes=K)
    assert unmatched.n_matched_cells == 0 and unmatched.mean_ap == 0.0  # a miss plus a false positive


def test_ranking_spans_images_and_unlisted_cells_score_zero() -> None:
    truth = _two_cells()
    labels = {"a": {1: [0], 2: []}, "b": {1: [0], 2: [0]}}
    # image a: the negative cell 2 outranks image b's positive cell 2; b's cell 2 is missing from the table
    probs = {"a": _probs(c1=[0.9, 0, 0], c2=[0.8, 0, 0]), "b": _probs(c1=[0.7, 0, 0])}
    result = cell_level_map({"a": truth, "b": truth}, labels, {"a": truth, "b": truth}, probs, num_classes=K)
    # ranked: hit .9, FP .8, hit .7, hit 0.0 -> AP = 1/3 * (1 + 2/3 + 3/4)
    assert result.per_class_ap[0] == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    assert result.n_true_cells == 4


def test_errors_name_the_image_and_cell() -> None:
    truth = _two_cells()
    with pytest.raises(KeyError, match="image 'b' has a true mask but no predicted mask"):
        cell_level_map({"a": truth, "b": truth}, {}, {"a": truth}, {}, num_classes=K)
    with pytest.raises(ValueError, match="image 'a', predicted cell 2: expected 3 probabilities"):
        cell_level_map({"a": truth}, {}, {"a": truth}, {"a": _probs(c1=[0, 0, 0], c2=[0.5])}, num_classes=K)


def _bootstrap_fixture() -> tuple[dict, dict, dict, dict, dict]:
    """6 images, cells 1 and 2 each; cell 1 carries class 0 in every image, cell 2 class 1 in images 0-2.
    A ranks both classes perfectly; B swaps the class-0 scores of the two cells in images 0 and 1."""
    mask = np.zeros((8, 8), dtype=np.int32)
    mask[:4], mask[4:] = 1, 2
    masks = {f"im{i}": mask for i in range(6)}
    truth = {f"im{i}": {1: (0,), 2: (1,) if i < 3 else ()} for i in range(6)}
    a, b = {}, {}
    for i in range(6):
        one, two = np.zeros(NUM_CLASSES), np.zeros(NUM_CLASSES)
        one[0], two[0] = 0.9, 0.1
        two[1] = 0.8 if i < 3 else 0.2
        a[f"im{i}"] = {1: one, 2: two}
        b[f"im{i}"] = {1: two.copy(), 2: one.copy()} if i < 2 else {1: one, 2: two}
        if i < 2:
            b[f"im{i}"][1][1], b[f"im{i}"][2][1] = one[1], two[1]
    return masks, truth, masks, a, b


def test_paired_bootstrap_of_identical_predictions_is_exactly_zero() -> None:
    masks, truth, pred_masks, a, _ = _bootstrap_fixture()
    result = paired_bootstrap_cell_map(masks, truth, pred_masks, a, a, resamples=50)
    assert result.map_a == result.map_b == pytest.approx(cell_level_map(masks, truth, pred_masks, a).mean_ap)
    assert result.map_a == pytest.approx(1.0)
    assert result.difference == 0.0 and result.interval == (0.0, 0.0) and result.share_b_better == 0.0
    assert result.resamples == 50 and result.n_images == 6


def test_paired_bootstrap_sees_a_worse_ranking_and_is_seeded() -> None:
    masks, truth, pred_masks, a, b = _bootstrap_fixture()
    result = paired_bootstrap_cell_map(masks, truth, pred_masks, a, b, resamples=200, seed=1)
    assert result.map_b == pytest.approx(cell_level_map(masks, truth, pred_masks, b).mean_ap)
    assert result.difference == pytest.approx(result.map_b - result.map_a) and result.difference < 0
    assert result.interval[0] < 0 and result.interval[1] <= 0 and result.share_b_better == 0.0
    assert paired_bootstrap_cell_map(masks, truth, pred_masks, a, b, resamples=200, seed=1) == result
    with pytest.raises(ValueError, match="^resamples must be positive, got 0$"):
        paired_bootstrap_cell_map(masks, truth, pred_masks, a, b, resamples=0)


def test_paired_bootstrap_of_matched_cells_made_once_equals_the_whole_computation() -> None:
    from hpa_cells.metrics import matched_per_image, paired_bootstrap_of_matched

    masks, truth, pred_masks, a, b = _bootstrap_fixture()
    parts_a, parts_b = (matched_per_image(masks, truth, pred_masks, p) for p in (a, b))
    assert len(parts_a) == 6
    assert paired_bootstrap_of_matched(parts_a, parts_b, 200, seed=1) == paired_bootstrap_cell_map(
        masks, truth, pred_masks, a, b, resamples=200, seed=1)
    with pytest.raises(ValueError, match="^a paired bootstrap needs the same images for A and B, got 6 and 5$"):
        paired_bootstrap_of_matched(parts_a, parts_b[:5])
