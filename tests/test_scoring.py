"""Scoring a prediction folder (the numbers evaluate.py prints and the report shows) on the tiny hand-made run:
the same values as the metrics computed directly, on the images the labels and the truth allow."""

from __future__ import annotations

import json

import numpy as np
import pytest
from map_fixtures import (
    CELL_BOXES,
    CELL_TRUTH,
    IMAGE_LABELS,
    IMAGE_PREDICTED,
    PredictionFixture,
    masks_of,
    write_prediction_fixture,
)

from hpa_cells.cache import CellCache
from hpa_cells.classes import CLASS_NAMES, NUM_CLASSES
from hpa_cells.labels import to_multi_hot
from hpa_cells.metrics import cell_level_map, class_curve, macro_f1, per_class_f1
from hpa_cells.predictions import read_prediction_folder
from hpa_cells.scoring import FolderScores, score_prediction_folder

EVALUATION_KEYS = ["n_images", "image_macro_f1", "per_class_f1", "images_without_labels",
                   "labelled_without_prediction", "labelled_without_prediction_ids", "labelled_unpredicted", "cell_map",
                   "cell_map_true_masks", "per_class_cell_ap", "per_class_cell_ap_true_masks", "cells_true",
                   "cells_matched", "cells_predicted", "cell_score"]
"""evaluate.py's JSON keys (as written by main): scoring must not add or drop one (issue 16 added the three
`labelled_*` keys: the labelled images that have no prediction)."""


@pytest.fixture(scope="module")
def fixture(tmp_path_factory: pytest.TempPathFactory) -> PredictionFixture:
    return write_prediction_fixture(tmp_path_factory.mktemp("run"))


def _truth() -> dict[str, dict[int, tuple[int, ...]]]:
    out: dict[str, dict[int, tuple[int, ...]]] = {}
    for (image_id, cell_id), labels in CELL_TRUTH.items():
        out.setdefault(image_id, {})[cell_id] = labels
    return out


def test_image_scores_match_the_metrics(fixture: PredictionFixture) -> None:
    scores = score_prediction_folder(fixture.pred, fixture.labels)
    ids = list(CELL_BOXES)
    y_true = to_multi_hot([IMAGE_LABELS[i] for i in ids])
    y_pred = to_multi_hot([IMAGE_PREDICTED[i] for i in ids])
    assert scores.n_images == 2 and scores.images_without_labels == 0
    assert scores.image_macro_f1 == pytest.approx(macro_f1(y_true, y_pred))
    np.testing.assert_array_equal(scores.per_class_f1_array, per_class_f1(y_true, y_pred))
    np.testing.assert_array_equal(scores.class_support, y_true.sum(axis=0))
    assert scores.cell_map is None and scores.cell_curves == {}
    assert list(scores.to_dict()) == EVALUATION_KEYS
    # labels as a mapping give the same numbers as the file
    assert score_prediction_folder(fixture.pred, IMAGE_LABELS).to_dict() == scores.to_dict()


def test_cell_scores_match_the_metrics(fixture: PredictionFixture) -> None:
    scores = score_prediction_folder(fixture.pred, fixture.labels, fixture.truth)
    truth = _truth()
    masks = {i: masks_of(i)[0] for i in CELL_BOXES}
    folder = read_prediction_folder(fixture.pred)
    expected = cell_level_map(masks, truth, masks, folder.cell_probabilities())
    assert scores.cell_map == pytest.approx(expected.mean_ap)
    assert scores.cells_true == scores.cells_matched == scores.cells_predicted == len(CELL_TRUTH)
    assert scores.cell_score == "gated" and scores.cell_image_ids == list(CELL_BOXES)
    carried = {c for labels in CELL_TRUTH.values() for c in labels}
    assert sorted(scores.cell_curves) == sorted(carried)
    for c, curve in scores.cell_curves.items():
        assert curve.average_precision == pytest.approx(scores.per_class_cell_ap[CLASS_NAMES[c]])
        assert curve.recall[-1] == pytest.approx(1.0)  # every true cell is matched here
    assert np.mean([c.average_precision for c in scores.cell_curves.values()]) == pytest.approx(scores.cell_map)
    record = json.loads(json.dumps(scores.to_dict()))
    assert list(record) == EVALUATION_KEYS and record["cell_map"] == pytest.approx(scores.cell_map)
    lines = scores.lines()
    assert lines[2] == "cell scores: gated" and "5/5 true cells matched at IoU>=0.6" in lines[3]


def test_the_labels_choose_the_cell_images(fixture: PredictionFixture) -> None:
    only_b = score_prediction_folder(fixture.pred, {"fieldB": (25,)}, fixture.truth)
    assert only_b.n_images == 1 and only_b.images_without_labels == 1
    assert only_b.cell_image_ids == ["fieldB"] and only_b.cells_true == 2
    unlabelled = score_prediction_folder(fixture.pred, None, fixture.truth)
    assert unlabelled.n_images == 0 and np.isnan(unlabelled.image_macro_f1)
    assert unlabelled.cell_image_ids == list(CELL_BOXES)
    with CellCache(fixture.cache) as cache:  # an open cache (the report's) gives the same numbers
        assert score_prediction_folder(fixture.pred, None, fixture.truth, cache).cell_map == unlabelled.cell_map


def test_class_curve_by_hand() -> None:
    curve = class_curve(np.array([0.9, 0.2, 0.6]), np.array([True, False, True]), 3)
    np.testing.assert_allclose(curve.precision, [1.0, 1.0, 2 / 3])
    np.testing.assert_allclose(curve.recall, [1 / 3, 2 / 3, 2 / 3])
    assert curve.average_precision == pytest.approx(2 / 3) and curve.n_positives == 3


def test_folder_scores_without_cells_print_the_image_table() -> None:
    scores = FolderScores(3, 0.5, {n: None for n in CLASS_NAMES})
    lines = scores.lines()
    assert lines[:2] == ["images scored: 3 (predicted images without labels: 0)", "image-level macro F1: 0.5000"]
    assert len(lines) == 3 + NUM_CLASSES and lines[3].endswith(" -")


def test_labelled_images_without_a_prediction_are_counted_and_named(fixture: PredictionFixture, tmp_path) -> None:
    """Issue 16: evaluate scored 2 of 6 labelled images and never mentioned the 4 without a prediction."""
    import shutil

    pred = shutil.copytree(fixture.pred, tmp_path / "pred")
    manifest = json.loads((pred / "manifest.json").read_text())
    manifest["unpredicted"] = [{"image_id": "fieldC", "reason": "no cells"}]
    (pred / "manifest.json").write_text(json.dumps(manifest))
    labels = {**IMAGE_LABELS, "fieldC": (1,), "fieldD": (2,), "fieldE": (3,), "fieldF": (0,), "fieldG": (4,),
              "fieldH": (5,)}
    scores = score_prediction_folder(pred, labels)
    assert scores.n_images == 2
    assert scores.labelled_without_prediction == 6 and scores.labelled_unpredicted == 1
    assert scores.labelled_without_prediction_ids == ["fieldC", "fieldD", "fieldE", "fieldF", "fieldG"]
    assert scores.lines()[1] == ("labelled images without a prediction (not scored): 6 (fieldC, fieldD, fieldE, "
                                 "fieldF, fieldG, ...; 1 of them skipped while segmenting or without cells)")
    complete = score_prediction_folder(pred, IMAGE_LABELS)
    assert complete.labelled_without_prediction == 0
    assert not any("without a prediction" in line for line in complete.lines())
