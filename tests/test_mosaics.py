"""Mosaic bags (mil.mosaics): single-label sources, the draw, the truth table, the dataset, training with extra
mosaic bags, the cell mAP of a model on mosaics (mil.mosaic_evaluation) and the leak baseline (mil.leak_baseline)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from mil_fixtures import HandBag, green_marker_bags, write_bag_cache
from sklearn.metrics import average_precision_score

from hpa_cells.cache import CellCache
from hpa_cells.classes import CLASS_NAMES, NUM_CLASSES
from mil.bags import collate_bags
from mil.config import DenseConfig, MILConfig
from mil.families import get_family
from mil.leak_baseline import FEATURE_NAMES, cell_intensity_features, crop_statistics, leak_baseline
from mil.model_folder import load_model
from mil.mosaic_evaluation import evaluate_mosaics, predict_mosaics
from mil.mosaics import (
    BagsWithMosaics,
    MosaicDataset,
    draw_mosaics,
    mosaic_cell_truth,
    score_mosaic_cells,
    single_label_images,
)
from mil.training import TrainConfig, train_mil

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# (image id, label class ids or None = unlabelled, per-cell QC flags: 2 = no_nucleus, 4 = small, both excluded)
CACHE_A = [
    ("a0", [0], [0, 0, 0, 0]),
    ("a1", [1], [0, 0, 0]),
    ("a2", [2], [0, 2, 0, 0, 0]),  # cell 2 excluded by QC
    ("a3", [0, 1], [0, 0, 0]),  # two labels: never a source
    ("a4", [3], [0, 0]),
    ("a5", [1], [0, 1, 0, 0]),  # a border cell (1) stays usable
    ("a6", None, [0, 0]),  # unlabelled
    ("a7", [2], [4, 4]),  # no usable cell
    ("a8", [4], [0]),  # one cell
]
CACHE_B = [
    ("b0", [5], [0, 0, 0]),
    ("b1", [0], [0, 0, 0]),
    ("b2", [1, 2], [0, 0]),
]
TINY_MODEL = MILConfig(encoder="test_resnet", head="class_gated_attention", input_size=16, dropout=0.0)
FAST = TrainConfig(epochs=2, batch_size=4, max_cells=4, learning_rate=3e-3, seed=3, device="cpu", val_fraction=0.25)


def _hand_bags(spec: list, cache_number: int, crop_size: int = 16) -> list[HandBag]:
    """Bags whose crops carry markers: red (0, 0) = the cell's number in its image (1..N), green (0, 0) = an image
    code (10 + 20 * cache_number + image number); green inside the mask is brighter for higher class ids."""
    rng = np.random.default_rng(cache_number)
    bags = []
    for number, (image_id, classes, flags) in enumerate(spec):
        n = len(flags)
        crops = rng.integers(0, 100, (n, 4, crop_size, crop_size), dtype=np.uint8)
        crops[:, 1] += np.uint8(20 * (classes[0] if classes else 0))
        crops[:, 0, 0, 0] = np.arange(1, n + 1)
        crops[:, 1, 0, 0] = 10 + 20 * cache_number + number
        masks = np.zeros((n, crop_size, crop_size), np.uint8)
        masks[:, 2:-2, 2:-2] = 1
        labels = None
        if classes is not None:
            labels = np.zeros(NUM_CLASSES, np.uint8)
            labels[classes] = 1
        cell_classes = np.repeat((labels if labels is not None else np.zeros(NUM_CLASSES))[None].astype(bool), n, 0)
        bags.append(HandBag(image_id, crops, masks, np.asarray(flags, np.int64), labels, cell_classes))
    return bags


@pytest.fixture(scope="module")
def caches(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("mosaic_caches")
    return [write_bag_cache(folder / "a.h5", _hand_bags(CACHE_A, 0)),
            write_bag_cache(folder / "b.h5", _hand_bags(CACHE_B, 1))]


@pytest.fixture(scope="module")
def square_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 images of 3-6 cells (32 px crops) with the green-square classes 0 and 1 (11 single-label images: 8 of
    class 0, 3 of class 1)."""
    return write_bag_cache(tmp_path_factory.mktemp("squares") / "cells.h5", green_marker_bags(16, seed=2))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, square_cache: Path) -> tuple[Path, dict, list[int]]:
    """FAST with 3 mosaic bags per epoch on the square cache; records how many mosaic bags each epoch read."""
    read: list[int] = []
    original = MosaicDataset.__getitem__

    def counting(self: MosaicDataset, item: int):  # noqa: ANN202
        read.append(self.epoch)
        return original(self, item)

    out = tmp_path_factory.mktemp("runs") / "mosaic"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(MosaicDataset, "__getitem__", counting)
        metrics = train_mil(square_cache, out, TINY_MODEL, replace(FAST, mosaic_bags=3))
    return out, metrics, read


def _marker(crops: torch.Tensor, channel: int) -> list[int]:
    return [round(float(v) * 255) for v in crops[:, channel, 0, 0]]


# ----- single-label sources ----------------------------------------------------------------------------------


def test_single_label_images_are_the_one_label_images_with_usable_cells(caches: list[Path]) -> None:
    images = single_label_images(caches)
    assert [(im.cache_index, im.image_id, im.class_id) for im in images] == [
        (0, "a0", 0), (0, "a1", 1), (0, "a2", 2), (0, "a4", 3), (0, "a5", 1), (0, "a8", 4), (1, "b0", 5),
        (1, "b1", 0)]
    cache = CellCache(caches[0])
    a2 = images[2]
    start = cache.cell_slice("a2").start
    assert [r - start for r in a2.cell_rows] == [0, 2, 3, 4]  # the QC-excluded cell 1 left out
    assert [im.image_id for im in single_label_images(caches, min_cells=3)] == ["a0", "a1", "a2", "a5", "b0", "b1"]


def test_allowed_ids_restrict_the_sources_and_no_other_image_enters(caches: list[Path],
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    allowed = {"a0", "a1", "a3", "a4", "b0", "zz9"}
    with caplog.at_level("WARNING", logger="mil.mosaics"):
        images = single_label_images(caches, allowed)
    assert "1 allowed image ids are in none of the caches: zz9" in caplog.text
    assert [im.image_id for im in images] == ["a0", "a1", "a4", "b0"]
    mosaics = draw_mosaics(images, 60, seed=1)
    used = {s.image_id for m in mosaics for s in m.sources}
    assert used == {"a0", "a1", "a4", "b0"}
    with pytest.raises(TypeError, match="not the single string 'a0'"):
        single_label_images(caches, "a0")


# ----- the draw ----------------------------------------------------------------------------------------------


def test_mosaics_mix_two_to_four_sources_with_different_labels(caches: list[Path]) -> None:
    images = single_label_images(caches)
    by_id = {im.image_id: im for im in images}
    mosaics = draw_mosaics(images, 80, seed=7)
    assert [m.mosaic_id for m in mosaics[:2]] == ["mosaic00000", "mosaic00001"]
    sizes = {len(m.sources) for m in mosaics}
    assert sizes == {2, 3, 4}
    for mosaic in mosaics:
        assert len(set(mosaic.class_ids)) == len(mosaic.sources)
        assert np.flatnonzero(mosaic.labels()).tolist() == sorted(mosaic.class_ids)
        for source in mosaic.sources:
            assert source.cell_rows == by_id[source.image_id].cell_rows
            assert source.class_id == by_id[source.image_id].class_id
    assert {s.cache_index for m in mosaics for s in m.sources} == {0, 1}  # both caches feed the mosaics
    assert draw_mosaics(images, 3, min_sources=2, max_sources=2, seed=0)[0].n_cells > 0
    assert {len(m.sources) for m in draw_mosaics(images, 20, min_sources=3, max_sources=3, seed=0)} == {3}


def test_the_draw_is_deterministic_for_a_seed_and_differs_across_seeds(caches: list[Path]) -> None:
    images = single_label_images(caches)
    first = draw_mosaics(images, 20, seed=4)
    assert draw_mosaics(images, 20, seed=4) == first
    assert draw_mosaics(images, 5, seed=4) == first[:5]  # mosaic i depends on (seed, i) only
    assert draw_mosaics(images, 20, seed=5) != first


def test_the_cap_per_source_keeps_a_subset_of_each_source(caches: list[Path]) -> None:
    images = single_label_images(caches)
    by_id = {im.image_id: im for im in images}
    for mosaic in draw_mosaics(images, 30, seed=2, max_cells_per_source=2):
        for source in mosaic.sources:
            assert 1 <= len(source.cell_rows) <= 2
            assert set(source.cell_rows) <= set(by_id[source.image_id].cell_rows)
            assert list(source.cell_rows) == sorted(source.cell_rows)


def test_draw_refuses_settings_that_cannot_work(caches: list[Path]) -> None:
    images = single_label_images(caches, {"a1", "a5"})  # both class 1
    with pytest.raises(ValueError, match=r"at least 2 different classes; the 2 single-label images given have 1 "
                                         r"\(Nuclear membrane\)"):
        draw_mosaics(images, 1)
    assert draw_mosaics(images, 0) == []
    with pytest.raises(ValueError, match="need 2 <= min_sources <= max_sources, got min_sources=1"):
        draw_mosaics(single_label_images(caches), 1, min_sources=1)
    with pytest.raises(ValueError, match="max_cells_per_source must be >= 1"):
        draw_mosaics(single_label_images(caches), 1, max_cells_per_source=0)


# ----- the truth table and the dataset ----------------------------------------------------------------------


def test_truth_table_lists_every_cell_with_its_source_label(caches: list[Path]) -> None:
    mosaics = draw_mosaics(single_label_images(caches), 6, seed=3)
    truth = mosaic_cell_truth(mosaics)
    assert list(truth.columns) == ["mosaic_id", "cell_index", "cache_index", "source_image_id", "cell_row",
                                   "class_id", "class_name"]
    assert len(truth) == sum(m.n_cells for m in mosaics)
    for mosaic in mosaics:
        rows = truth[truth["mosaic_id"] == mosaic.mosaic_id]
        assert rows["cell_index"].tolist() == list(range(mosaic.n_cells))
        expected = [(s.image_id, r, s.class_id) for s in mosaic.sources for r in s.cell_rows]
        assert list(zip(rows["source_image_id"], rows["cell_row"], rows["class_id"], strict=True)) == expected
    assert (truth["class_name"] == [CLASS_NAMES[c] for c in truth["class_id"]]).all()


def test_dataset_bags_hold_the_mosaic_cells_in_truth_order(caches: list[Path]) -> None:
    mosaics = draw_mosaics(single_label_images(caches), 8, seed=9)
    dataset = MosaicDataset(caches, mosaics)
    truth = mosaic_cell_truth(mosaics)
    codes = {image_id: 10 + 20 * c + n for c, spec in enumerate((CACHE_A, CACHE_B))
             for n, (image_id, _, _) in enumerate(spec)}
    opened = [CellCache(p) for p in caches]
    for k, mosaic in enumerate(mosaics):
        item = dataset[k]
        rows = truth[truth["mosaic_id"] == mosaic.mosaic_id]
        assert item.image_index == k
        assert _marker(item.crops, 1) == [codes[i] for i in rows["source_image_id"]]
        starts = [opened[c].cell_slice(i).start for c, i in zip(rows["cache_index"], rows["source_image_id"],
                                                                 strict=True)]
        assert _marker(item.crops, 0) == (rows["cell_row"].to_numpy() - starts + 1).tolist()
        assert item.cell_rows.tolist() == rows["cell_row"].tolist()
        assert torch.equal(item.labels, torch.from_numpy(mosaic.labels()))
    collated = collate_bags([dataset[0], dataset[1]])
    assert collated.batch.crops.shape[:2] == (2, max(mosaics[0].n_cells, mosaics[1].n_cells))
    assert collated.batch.valid.sum().item() == mosaics[0].n_cells + mosaics[1].n_cells


def test_training_bags_keep_every_source_within_max_cells(caches: list[Path]) -> None:
    mosaics = [m for m in draw_mosaics(single_label_images(caches), 40, seed=1) if m.n_cells > 5]
    dataset = MosaicDataset(caches, mosaics, max_cells=5, train=True, seed=0)
    codes = {image_id: 10 + 20 * c + n for c, spec in enumerate((CACHE_A, CACHE_B))
             for n, (image_id, _, _) in enumerate(spec)}
    for k, mosaic in enumerate(mosaics):
        item = dataset[k]
        assert item.crops.shape[0] == max(5, len(mosaic.sources))
        rows = set(item.cell_rows.tolist())
        for source in mosaic.sources:
            assert rows & set(source.cell_rows), f"{mosaic.mosaic_id}: source {source.image_id} lost"
        dataset.set_epoch(0)
        assert torch.equal(dataset[k].cell_rows, item.cell_rows)
    with pytest.raises(ValueError, match="cache index 1 but 1 caches given"):
        MosaicDataset(caches[:1], mosaics)
    assert {round(float(v) * 255) for v in MosaicDataset(caches, mosaics)[0].crops[:, 1, 0, 0]} <= set(codes.values())


# ----- training with mosaic bags -----------------------------------------------------------------------------


def test_training_mosaics_come_from_the_training_images_only(square_cache: Path) -> None:
    cache = CellCache(square_cache)
    train_indices = list(range(10))  # single-label: 0, 2, 7 (class 0), 1, 8 (class 1)
    dataset = BagsWithMosaics(square_cache, train_indices, 4, max_cells=4, seed=0)
    allowed = {cache.image_ids[i] for i in train_indices}
    assert len(dataset) == len(dataset.image_indices) + 4
    seen = []
    for epoch in range(3):
        dataset.set_epoch(epoch)
        seen.append(dataset.mosaics)
        assert {s.image_id for m in dataset.mosaics for s in m.sources} <= allowed
        items = [dataset[i] for i in range(len(dataset.image_indices), len(dataset))]
        assert all(item.crops.shape[0] <= 4 for item in items)
    assert seen[0] != seen[1]
    dataset.set_epoch(0)
    assert dataset.mosaics == seen[0]


def test_train_with_mosaic_bags_runs_and_reads_them_each_epoch(trained: tuple[Path, dict, list[int]]) -> None:
    out, metrics, read = trained
    assert read == [0, 0, 0, 1, 1, 1]  # 3 mosaic bags in each of the 2 epochs
    assert metrics["n_train_images"] == len(metrics["train_image_ids"]) == 12
    assert not set(metrics["train_image_ids"]) & set(metrics["val_image_ids"])
    assert json.loads((out / "config.json").read_text())["training"]["mosaic_bags"] == 3


def test_mosaic_bags_are_refused_for_the_dense_family_and_with_cell_labels(square_cache: Path, tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(ValueError, match=r"mosaic bags \(mosaic_bags\) mix cell crops of several fields and are "
                                         r"implemented for the crop family only"):
        get_family("dense").training_data(DenseConfig(encoder="tu-test_resnet", input_size=64),
                                          TrainConfig(mosaic_bags=2))
    with pytest.raises(ValueError, match=r"cannot be combined with per-cell label training"):
        TrainConfig(mosaic_bags=2, cell_labels="cells.csv")
    with pytest.raises(ValueError, match="mosaic_bags must be >= 0, got -1"):
        TrainConfig(mosaic_bags=-1)
    from hpa_cells_cli.train import main

    code = main(["--cache", str(square_cache), "--out", str(tmp_path / "m"), "--family", "dense",
                 "--mosaic-bags", "2"])
    assert code == 2
    assert "error: --mosaic-bags and --mosaic-fraction apply to --family crop only" in capsys.readouterr().err


def test_mosaic_bags_need_two_single_label_classes_among_the_training_images(caches: list[Path]) -> None:
    with pytest.raises(ValueError, match=r"a\.h5: mosaic bags from the training images: mosaics of >= 2 sources "
                                         r"need single-label images of at least 2 different classes"):
        BagsWithMosaics(caches[0], [1, 3, 5], 2)


# ----- cell mAP on mosaics -----------------------------------------------------------------------------------


def test_cell_map_equals_a_hand_computation() -> None:
    import pandas as pd

    truth = pd.DataFrame({"mosaic_id": ["m0", "m0", "m0", "m1", "m1"], "class_id": [0, 0, 1, 2, 1]})
    scores = np.array([[0.9, 0.1, 0.0],
                       [0.4, 0.3, 0.2],
                       [0.5, 0.8, 0.1],
                       [0.2, 0.6, 0.15],
                       [0.1, 0.7, 0.3]])
    score = score_mosaic_cells(scores, truth)
    # class 0: hits at ranks 1 and 3 -> (1 + 2/3) / 2; class 1: ranks 1, 2 -> 1; class 2: rank 3 -> 1/3
    assert score.per_class_ap.tolist() == pytest.approx([5 / 6, 1.0, 1 / 3])
    assert score.mean_ap == pytest.approx(13 / 18)
    assert (score.n_mosaics, score.n_cells, score.n_classes) == (2, 5, 3)
    with pytest.raises(ValueError, match=r"cell scores \(4, 3\) do not fit the truth table's 5 cells"):
        score_mosaic_cells(scores[:4], truth)


def test_model_cell_map_on_mosaics_matches_its_cell_scores(trained: tuple[Path, dict, list[int]],
                                                            square_cache: Path) -> None:
    loaded = load_model(trained[0])
    mosaics = draw_mosaics(single_label_images([square_cache]), 6, seed=0)
    gated = evaluate_mosaics(loaded, [square_cache], mosaics)
    own = evaluate_mosaics(loaded, [square_cache], mosaics, cell_score="cell")
    truth = mosaic_cell_truth(mosaics)
    assert gated.truth.equals(truth)
    assert gated.score.n_cells == len(truth) and gated.score.n_mosaics == 6
    present = sorted(truth["class_id"].unique())
    assert gated.score.n_classes == len(present)
    expected = np.mean([average_precision_score(truth["class_id"] == c, gated.cell_probs[:, c]) for c in present])
    assert gated.score.mean_ap == pytest.approx(expected)
    predictions = predict_mosaics(loaded, [square_cache], mosaics)
    assert predictions.image_ids == [m.mosaic_id for m in mosaics]
    bag_of_cell = predictions.image_probs[[predictions.image_ids.index(m) for m in truth["mosaic_id"]]]
    assert gated.cell_probs == pytest.approx(np.sqrt(own.cell_probs * bag_of_cell), abs=1e-6)
    assert 0.0 <= gated.score.mean_ap <= 1.0


# ----- the leak baseline -------------------------------------------------------------------------------------


def test_crop_statistics_inside_the_mask() -> None:
    crops = np.zeros((1, 4, 4, 4), np.uint8)
    crops[0, 1, :2, :2] = [[51, 102], [153, 204]]
    masks = np.zeros((1, 4, 4), np.uint8)
    masks[0, :2, :2] = 1
    stats = crop_statistics(crops, masks)
    values = np.array([0.2, 0.4, 0.6, 0.8])
    assert stats.shape == (1, 20)
    assert stats[0, 5:10] == pytest.approx([values.mean(), values.std(), *np.percentile(values, [10, 50, 90])])
    assert stats[0, :5].tolist() == [0.0] * 5


def test_leak_baseline_trains_on_training_mosaics_and_scores_held_out_ones(caches: list[Path]) -> None:
    train = draw_mosaics(single_label_images(caches, {"a0", "a1", "a2", "a4"}), 10, seed=0)
    test = draw_mosaics(single_label_images(caches, {"a5", "a8", "b0", "b1"}), 10, seed=1, id_prefix="test")
    features = cell_intensity_features(caches, test)
    assert features.shape == (len(mosaic_cell_truth(test)), len(FEATURE_NAMES)) == (features.shape[0], 21)
    assert (features[:, -1] == 64).all()  # the fixture's cell area
    score = leak_baseline(caches, train, test)
    assert 0.0 <= score.mean_ap <= 1.0
    assert score.n_cells == features.shape[0] and score.n_mosaics == 10
    assert score.n_classes == len({s.class_id for m in test for s in m.sources})
