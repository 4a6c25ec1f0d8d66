"""The real-data benchmark's parts that need no real data: image-level metrics with bootstrap intervals
(`hpa_cells.metrics`), the saved cross-validation folds (`benchmarks/real_data.py`) and the fixed split of
`TrainConfig.split_file` (`mil.training.splits`)."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from mil_fixtures import HandBag, random_bags, write_bag_cache

from hpa_cells.metrics import (
    bootstrap_image_metrics,
    evaluable_classes,
    image_map,
    image_metrics,
    micro_f1,
    paired_bootstrap_image_metrics,
    per_class_average_precision,
)
from mil.config import MILConfig
from mil.training import SETTINGS_ADDED_LATER, TrainConfig, train_mil
from mil.training import loop as training_loop
from mil.training.splits import SplitFileError

REPO = Path(__file__).resolve().parents[1]

# 5 fields x 3 classes. Class 0: 3 positives, class 1: 3 positives (two tied at 0.6), class 2: 1 positive.
TRUTH = np.array([[1, 0, 1], [1, 1, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
SCORES = np.array([[0.9, 0.2, 0.1], [0.4, 0.6, 0.9], [0.8, 0.6, 0.2], [0.7, 0.3, 0.3], [0.1, 0.5, 0.4]])
PRED = np.array([[1, 0, 0], [0, 1, 1], [1, 1, 0], [1, 1, 0], [0, 0, 0]])
# by hand: class 0 ranked T F T T F -> AP (1 + 2/3 + 3/4) / 3; class 1: the tie (both T) at P 1, R 2/3, then
# F, then T at P 3/4, R 1 -> 2/3 + 1/3 * 3/4; class 2: its one positive ranked last -> 1/5
AP_BY_HAND = [(1 + 2 / 3 + 3 / 4) / 3, 2 / 3 + 0.25, 0.2]


def load_real_data_module():
    """benchmarks/real_data.py (benchmarks/ is not a package), loaded once."""
    if "real_data" not in sys.modules:
        spec = importlib.util.spec_from_file_location("real_data", REPO / "benchmarks" / "real_data.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["real_data"] = module  # its dataclasses look their module up
        spec.loader.exec_module(module)
    return sys.modules["real_data"]


# ----- metrics ------------------------------------------------------------------------------------------


def test_image_metrics_match_hand_computed_values() -> None:
    assert per_class_average_precision(TRUTH, SCORES) == pytest.approx(AP_BY_HAND)
    assert evaluable_classes(TRUTH).tolist() == [0, 1]
    assert evaluable_classes(TRUTH, min_positives=1).tolist() == [0, 1, 2]
    assert image_map(TRUTH, SCORES) == pytest.approx((AP_BY_HAND[0] + AP_BY_HAND[1]) / 2)
    assert image_map(TRUTH, SCORES, min_positives=1) == pytest.approx(sum(AP_BY_HAND) / 3)
    assert np.isnan(image_map(TRUTH, SCORES, min_positives=4))
    # micro F1: TP 2 + 3 + 0, FP 1 + 0 + 1, FN 1 + 0 + 1 -> 10 / 14
    assert micro_f1(TRUTH, PRED) == pytest.approx(10 / 14)
    values, ap = image_metrics(TRUTH, SCORES, PRED, evaluable_classes(TRUTH))
    # macro F1 over classes 0 and 1 only: class 0 F1 = 4 / 6, class 1 F1 = 1 (class 2's F1 of 0 is left out)
    assert values == pytest.approx({"map": (AP_BY_HAND[0] + AP_BY_HAND[1]) / 2, "macro_f1": (4 / 6 + 1) / 2,
                                    "micro_f1": 10 / 14})
    assert ap == pytest.approx(AP_BY_HAND)
    with pytest.raises(ValueError, match=r"truth is \(5, 3\) but scores or predictions are \(5, 2\)"):
        image_map(TRUTH, SCORES[:, :2])


def test_average_precision_agrees_with_scikit_learn() -> None:
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(3)
    truth = rng.random((30, 6)) < 0.3
    scores = np.round(rng.random((30, 6)), 1) + 0.3 * truth  # rounded: many ties
    expected = [average_precision_score(truth[:, c], scores[:, c]) for c in range(6)]
    assert per_class_average_precision(truth, scores) == pytest.approx(expected)


def _random_set(seed: int, n: int = 40) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = rng.random((n, 5)) < 0.3
    truth[:4] = True  # every class has >= 4 positives
    scores = rng.random((n, 5)) + 0.4 * truth
    return truth, scores, scores > 0.7


def test_bootstrap_interval_holds_the_estimate_and_is_seeded() -> None:
    truth, scores, pred = _random_set(0)
    boot = bootstrap_image_metrics(truth, scores, pred, resamples=300, seed=1)
    assert boot.classes == (0, 1, 2, 3, 4) and boot.n_fields == 40 and boot.resamples == 300
    values, ap = image_metrics(truth, scores, pred, np.arange(5))
    for name, interval in boot.metrics.items():
        assert interval.value == pytest.approx(values[name])
        assert interval.low <= interval.value <= interval.high and interval.low < interval.high
    for c, interval in boot.per_class_ap.items():
        assert interval.value == pytest.approx(ap[c]) and interval.low <= interval.value <= interval.high
    again = bootstrap_image_metrics(truth, scores, pred, resamples=300, seed=1)
    assert again.metrics == boot.metrics and again.per_class_ap == boot.per_class_ap
    other = bootstrap_image_metrics(truth, scores, pred, resamples=300, seed=2)
    assert other.metrics["map"].value == boot.metrics["map"].value
    assert other.metrics["map"].low != boot.metrics["map"].low
    with pytest.raises(ValueError, match="resamples must be positive, got 0"):
        bootstrap_image_metrics(truth, scores, pred, resamples=0)


def test_paired_bootstrap_of_two_rows() -> None:
    truth, scores, pred = _random_set(5)
    same = paired_bootstrap_image_metrics(truth, (scores, pred), (scores, pred), resamples=200, seed=0)
    assert same["map"].to_dict() == {"a": same["map"].value_a, "b": same["map"].value_a, "difference": 0.0,
                                      "low": 0.0, "high": 0.0, "share_b_better": 0.0}
    perfect = (truth.astype(float), truth)
    better = paired_bootstrap_image_metrics(truth, (scores, pred), perfect, resamples=200, seed=0)
    assert better["map"].value_b == 1.0 and better["macro_f1"].value_b == 1.0 and better["micro_f1"].value_b == 1.0
    for diff in better.values():
        assert diff.difference == pytest.approx(diff.value_b - diff.value_a)
        assert 0 < diff.low <= diff.difference <= diff.high and diff.share_b_better == 1.0
    repeated = paired_bootstrap_image_metrics(truth, (scores, pred), perfect, resamples=200, seed=0)
    assert repeated == better


# ----- folds --------------------------------------------------------------------------------------------


def _fields(n: int = 40) -> tuple[list[str], list[tuple[int, ...]]]:
    ids = [f"field{i:02d}" for i in range(n)]
    labels = [(0,) if i < 20 else (2, 5) if i < 30 else (7,) for i in range(n)]
    return ids, labels


def test_folds_cover_every_field_once_stratified() -> None:
    real_data = load_real_data_module()
    ids, labels = _fields()
    folds = real_data.make_folds(ids, labels, n_folds=5, seed=0)
    fold_of = {f["id"]: f["fold"] for f in folds["fields"]}
    assert sorted(fold_of) == ids and set(fold_of.values()) == {0, 1, 2, 3, 4}
    for fold in range(5):
        held_out = [i for i in ids if fold_of[i] == fold]
        assert len(held_out) == 8
        assert sum(labels[ids.index(i)] == (0,) for i in held_out) == 4  # 20 positives of class 0: 4 per fold
        assert sum(labels[ids.index(i)] == (2, 5) for i in held_out) == 2
    splits = real_data.fold_splits(folds)
    assert sorted(i for s in splits for i in s["held_out"]) == ids
    for split in splits:
        assert len(split["validation"]) == 7 and len(split["train"]) == 25  # 20 % of the 32 training fields, rounded up
        parts = [set(split["train"]), set(split["validation"]), set(split["held_out"])]
        assert set().union(*parts) == set(ids) and sum(map(len, parts)) == 40
    assert real_data.make_folds(ids, labels, seed=0) == folds
    assert real_data.make_folds(ids, labels, seed=1)["fields"] != folds["fields"]


def test_saved_folds_are_reused_and_a_changed_field_set_is_refused(tmp_path: Path) -> None:
    real_data = load_real_data_module()
    ids, labels = _fields()
    path = tmp_path / "results" / "real_folds.json"
    made = real_data.load_or_make_folds(path, ids, labels)
    assert json.loads(path.read_text()) == made
    saved = {**made, "description": "kept"}
    path.write_text(json.dumps(saved))
    assert real_data.load_or_make_folds(path, ids, labels) == saved  # read back, never made again
    with pytest.raises(real_data.FoldsFileError,
                       match=r"real_folds.json was made for another set of fields or settings: 1 field\(s\) not in "
                             r"the saved folds \(first: extra\)"):
        real_data.load_or_make_folds(path, [*ids, "extra"], [*labels, (1,)])
    with pytest.raises(real_data.FoldsFileError, match=r"1 field\(s\) in the saved folds but not found now "
                                                       r"\(first: field39\)"):
        real_data.load_or_make_folds(path, ids[:-1], labels[:-1])
    with pytest.raises(real_data.FoldsFileError, match=r"1 field\(s\) with other labels now \(first: field00\)"):
        real_data.load_or_make_folds(path, ids, [(1,), *labels[1:]])
    with pytest.raises(real_data.FoldsFileError, match="seed 0 saved, 3 asked"):
        real_data.load_or_make_folds(path, ids, labels, seed=3)


# ----- TrainConfig.split_file ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def split_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """img000..img007 labelled, plus 'unlabelled'."""
    bags = random_bags(8, seed=2)
    unlabelled = HandBag("unlabelled", bags[0].crops, bags[0].masks, bags[0].qc_flags, None, bags[0].cell_classes)
    return write_bag_cache(tmp_path_factory.mktemp("split") / "cells.h5", [*bags, unlabelled])


def _split_file(path: Path, train: list[str], validation: list[str]) -> Path:
    path.write_text(json.dumps({"fold": 0, "train": train, "validation": validation, "held_out": ["x"]}))
    return path


@pytest.mark.usefixtures("one_torch_thread")
def test_split_file_fixes_the_training_and_validation_fields(split_cache: Path, tmp_path: Path) -> None:
    assert SETTINGS_ADDED_LATER["split_file"] is None  # older checkpoints resume
    split = _split_file(tmp_path / "split.json", ["img004", "img000", "img002", "img006"], ["img007", "img001"])
    config = TrainConfig(epochs=1, batch_size=4, max_cells=4, seed=0, device="cpu", split_file=str(split))
    train, validation, _, _ = training_loop._split_cache(split_cache, config)
    assert train.tolist() == [0, 2, 4, 6] and validation.tolist() == [1, 7]
    model = MILConfig(encoder="test_resnet", input_size=16, dropout=0.0)
    metrics = train_mil(split_cache, tmp_path / "model", model, config)
    assert metrics["train_image_ids"] == ["img000", "img002", "img004", "img006"]
    assert metrics["val_image_ids"] == ["img001", "img007"]
    saved = json.loads((tmp_path / "model" / "config.json").read_text())["training"]
    assert saved["split_file"] == str(split)


@pytest.mark.parametrize(
    ("train", "validation", "message"),
    [
        (["img000", "nope"], ["img001"], "image id 'nope' \\(in 'train'\\) is not in the cache {cache}"),
        (["img000"], ["unlabelled"], "image id 'unlabelled' \\(in 'validation'\\) has no labels in the cache {cache}"),
        (["img000", "img001"], ["img001"], "image id 'img001' is in both 'train' and 'validation'"),
        (["img000", "img000"], ["img001"], "image id 'img000' is listed twice in 'train'"),
        (["img000"], [], "'validation' must be a non-empty list of image id strings"),
    ],
)
def test_split_file_errors_name_the_id_and_the_file(split_cache: Path, tmp_path: Path, train: list[str],
                                                     validation: list[str], message: str) -> None:
    split = _split_file(tmp_path / "split.json", train, validation)
    config = TrainConfig(split_file=str(split))
    with pytest.raises(SplitFileError, match=f"^{re.escape(str(split))}: "
                       + message.format(cache=re.escape(str(split_cache)))):
        training_loop._split_cache(split_cache, config)


def test_train_command_reports_a_bad_split_file(split_cache: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from hpa_cells_cli import train

    split = _split_file(tmp_path / "split.json", ["img000", "ghost"], ["img001"])
    code = train.main(["--cache", str(split_cache), "--out", str(tmp_path / "m"), "--split-file", str(split),
                       "--encoder", "test_resnet", "--input-size", "16", "--epochs", "1", "--device", "cpu"])
    assert code == 2
    assert capsys.readouterr().err.strip() == (f"error: {split}: image id 'ghost' (in 'train') is not in the cache "
                                               f"{split_cache}")
    missing = tmp_path / "absent.json"
    assert train.main(["--cache", str(split_cache), "--out", str(tmp_path / "m2"), "--split-file", str(missing),
                       "--encoder", "test_resnet", "--epochs", "1"]) == 2
    assert capsys.readouterr().err.strip() == f"error: split file not found: {missing}"
