"""Per-class decision thresholds: known best cuts, ties, classes without positives, file round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hpa_cells.classes import CLASS_NAMES, NUM_CLASSES
from hpa_cells.metrics import per_class_f1
from mil.thresholds import fit_thresholds, load_thresholds, save_thresholds

# columns: one hand-made case per class (N = 4 images)
PROBS = np.array([
    [0.9, 0.9, 0.9, 0.7, 0.9, 0.9],
    [0.8, 0.6, 0.6, 0.7, 0.8, 0.6],
    [0.3, 0.4, 0.5, 0.7, 0.7, 0.5],
    [0.2, 0.1, 0.4, 0.2, 0.1, 0.4],
])
TARGETS = np.array([
    [1, 0, 0, 1, 0, 1],
    [1, 1, 0, 0, 0, 0],
    [0, 1, 0, 1, 0, 0],
    [0, 0, 0, 0, 1, 1],
])
EXPECTED = [
    0.55,  # perfectly separable: midway between the lowest positive (0.8) and the highest negative (0.3)
    0.25,  # best F1 (0.8) takes the top three; cut between 0.4 and 0.1
    0.5,  # no positives: keeps the default
    0.45,  # a tie group (0.7 x3) is kept whole: cut below it
    0.05,  # the only positive has the lowest score: cut below everything (midway to 0)
    0.75,  # F1 ties (2/3 at the top one, 2/3 at all four): the higher threshold wins
]


def test_fit_thresholds_on_hand_made_cases() -> None:
    np.testing.assert_allclose(fit_thresholds(PROBS, TARGETS), EXPECTED, atol=1e-12)


def test_default_is_configurable_for_classes_without_positives() -> None:
    thresholds = fit_thresholds(PROBS, TARGETS, default=0.3)
    assert thresholds[2] == 0.3
    assert thresholds[0] == pytest.approx(0.55)


def test_fitted_thresholds_reach_the_best_f1_of_any_threshold() -> None:
    rng = np.random.default_rng(0)
    targets = rng.random((60, 8)) < 0.3
    probs = np.round(np.clip(0.35 * targets + rng.random((60, 8)) * 0.7, 0, 1), 2)  # rounding makes ties
    thresholds = fit_thresholds(probs, targets)
    fitted = per_class_f1(targets, probs >= thresholds)
    for k in range(8):
        candidates = np.r_[np.unique(probs[:, k]), 1.1]
        best = max(per_class_f1(targets[:, [k]], (probs[:, [k]] >= t))[0] for t in candidates)
        assert fitted[k] == pytest.approx(best), k


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match=r"must both be N,K; got \(4, 6\), \(4, 5\)"):
        fit_thresholds(PROBS, TARGETS[:, :5])
    with pytest.raises(ValueError, match=r"must both be N,K; got \(4,\), \(4,\)"):
        fit_thresholds(PROBS[:, 0], TARGETS[:, 0])


def test_save_load_round_trip_and_wrong_length(tmp_path: Path) -> None:
    path = tmp_path / "thresholds.json"
    thresholds = np.linspace(0.05, 0.95, NUM_CLASSES)
    save_thresholds(path, thresholds, CLASS_NAMES)
    record = json.loads(path.read_text())
    assert record["classes"] == list(CLASS_NAMES)
    assert len(record["thresholds"]) == NUM_CLASSES
    np.testing.assert_array_equal(load_thresholds(path, NUM_CLASSES), thresholds)
    with pytest.raises(ValueError) as info:
        load_thresholds(path, 19)
    assert str(info.value) == f"{path}: expected 19 thresholds, found {NUM_CLASSES}"
