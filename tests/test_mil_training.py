"""Bags over the cell cache, the padding collate, the stratified split, and training into a model folder."""

from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from mil_fixtures import green_marker_bags, random_bags, write_bag_cache, write_cell_labels
from safetensors.torch import load_file
from sklearn.metrics import average_precision_score

from hpa_cells.cache import CellCache
from hpa_cells.classes import NUM_CLASSES
from hpa_cells.metrics import per_class_f1
from mil.bags import BagDataset, BagItem, collate_bags
from mil.config import MILConfig
from mil.families import crop as crop_family
from mil.model_folder import REQUIRED_FILES, load_model
from mil.training import TrainConfig, loss_function, split_indices, train_mil
from mil.training import loop as training_loop

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# per-image QC flags of the bag cache: 1 border, 2 no_nucleus, 4 small (default exclusion: no_nucleus, small)
QC = [
    [0, 0, 0, 0, 0],
    [0, 4, 0],
    [2, 4],  # nothing usable: dropped
    [1, 0, 0, 0, 0, 0, 0, 0],
    [0, 0],
]
TINY_MODEL = MILConfig(encoder="test_resnet", head="class_gated_attention", input_size=16, dropout=0.0)
FAST = TrainConfig(epochs=2, batch_size=4, max_cells=4, learning_rate=3e-3, seed=3, device="cpu", val_fraction=0.25)


@pytest.fixture(scope="module")
def bag_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bag_cache(tmp_path_factory.mktemp("bags") / "cells.h5", random_bags(len(QC), seed=5, qc_flags=QC))


@pytest.fixture(scope="module")
def square_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 images of 3-6 cells (32 px crops) with the green-square classes 0 and 1."""
    return write_bag_cache(tmp_path_factory.mktemp("squares") / "cells.h5", green_marker_bags(16, seed=0))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, square_cache: Path) -> tuple[Path, dict]:
    """The reference run: FAST (2 epochs) on the square cache."""
    out = tmp_path_factory.mktemp("runs") / "reference"
    return out, train_mil(square_cache, out, TINY_MODEL, FAST)


def _cell_numbers(crops: torch.Tensor) -> list[int]:
    """The cell numbers written into red pixel (0, 0) of un-augmented crops."""
    return [round(float(v) * 255) for v in crops[:, 0, 0, 0]]


# ----- bags -------------------------------------------------------------------------------------------


def test_eval_bags_hold_all_usable_cells_in_order(bag_cache: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="mil.bags"):
        dataset = BagDataset(bag_cache)
    assert "1 images have no usable cells after QC and are left out: img002" in caplog.text
    assert dataset.image_indices == [0, 1, 3, 4]
    cache = CellCache(bag_cache)
    offsets = cache.image_table()["offset"].tolist()
    expected_cells = {0: [1, 2, 3, 4, 5], 1: [1, 3], 3: [1, 2, 3, 4, 5, 6, 7, 8], 4: [1, 2]}  # border cells kept
    for item in (dataset[i] for i in range(len(dataset))):
        numbers = expected_cells[item.image_index]
        assert _cell_numbers(item.crops) == numbers
        assert item.cell_rows.tolist() == [offsets[item.image_index] + k - 1 for k in numbers]
        crops, masks = cache.cells_of(item.image_index)
        rows = [k - 1 for k in numbers]
        assert torch.equal(item.crops, torch.from_numpy(crops[rows].astype(np.float32) / 255))
        assert torch.equal(item.masks, torch.from_numpy(masks[rows].astype(np.float32)))
        assert item.crops.dtype == torch.float32 and item.crops.shape[1:] == (4, 16, 16)
        assert torch.equal(item.labels, torch.from_numpy(cache.labels[item.image_index].astype(np.float32)))
    np.testing.assert_array_equal(dataset.labels, cache.labels[[0, 1, 3, 4]].astype(np.float32))


def test_exclusion_follows_the_flag_names(bag_cache: Path) -> None:
    everything = BagDataset(bag_cache, exclude_flags=())
    assert everything.image_indices == [0, 1, 2, 3, 4]
    assert [everything[i].crops.shape[0] for i in range(5)] == [5, 3, 2, 8, 2]
    no_border = BagDataset(bag_cache, image_indices=[3, 1], exclude_flags=("BORDER",))  # case-insensitive
    assert no_border.image_indices == [3, 1]
    assert _cell_numbers(no_border[0].crops) == [2, 3, 4, 5, 6, 7, 8]
    assert _cell_numbers(no_border[1].crops) == [1, 2, 3]


def test_unknown_flag_name_is_an_error(bag_cache: Path) -> None:
    with pytest.raises(ValueError) as info:
        BagDataset(bag_cache, exclude_flags=("small", "blurry"))
    assert str(info.value) == f"unknown QC flag 'blurry' in {bag_cache}; the cache has ['border', 'no_nucleus', 'small']"


def test_train_draws_are_bounded_seeded_and_change_with_the_epoch(bag_cache: Path) -> None:
    def draws(seed: int, epoch: int) -> list[list[int]]:
        dataset = BagDataset(bag_cache, max_cells=3, train=True, seed=seed)
        dataset.set_epoch(epoch)
        return [dataset[i].cell_rows.tolist() for i in range(len(dataset))]

    usable = {i: BagDataset(bag_cache)[i].cell_rows.tolist() for i in range(4)}
    first = draws(seed=0, epoch=0)
    for i, rows in enumerate(first):
        assert len(rows) == min(3, len(usable[i]))
        assert rows == sorted(set(rows)) and set(rows) <= set(usable[i])
    assert draws(seed=0, epoch=0) == first
    epochs = [draws(seed=0, epoch=e) for e in range(1, 6)]
    assert any(d[0] != first[0] for d in epochs) and any(d[2] != first[2] for d in epochs)
    assert any(draws(seed=s, epoch=0)[2] != first[2] for s in range(1, 6))
    assert all(d[3] == first[3] for d in epochs)  # 2 cells <= max_cells: always both


def test_training_augmentation_moves_crop_and_mask_together(bag_cache: Path) -> None:
    cache = CellCache(bag_cache)
    all_crops = np.concatenate([cache.cells_of(i)[0] for i in range(cache.num_images)]).astype(np.float32) / 255
    all_masks = np.concatenate([cache.cells_of(i)[1] for i in range(cache.num_images)]).astype(np.float32)
    dataset = BagDataset(bag_cache, max_cells=8, train=True, seed=1, intensity_jitter=0.0)
    transforms_seen = set()
    for epoch in range(3):
        dataset.set_epoch(epoch)
        for item in (dataset[i] for i in range(len(dataset))):
            for crop, mask, row in zip(item.crops.numpy(), item.masks.numpy(), item.cell_rows.tolist(), strict=True):
                matches = [(k, flip) for k in range(4) for flip in (False, True)
                           if np.array_equal(_dihedral(all_crops[row], k, flip, axes=(1, 2)), crop)]
                assert len(matches) == 1, row
                k, flip = matches[0]
                assert np.array_equal(_dihedral(all_masks[row], k, flip, axes=(0, 1)), mask)
                transforms_seen.add((k, flip))
    assert len(transforms_seen) >= 6


def _dihedral(array: np.ndarray, k: int, flip: bool, axes: tuple[int, int]) -> np.ndarray:
    out = np.rot90(array, k, axes=axes)
    return out[..., ::-1] if flip else out


def test_intensity_jitter_is_a_per_channel_gain(bag_cache: Path) -> None:
    cache = CellCache(bag_cache)
    dataset = BagDataset(bag_cache, image_indices=[0], max_cells=8, train=True, seed=2, intensity_jitter=0.2)
    item = dataset[0]
    originals = cache.cells_of(0)[0].astype(np.float32) / 255
    for crop, row in zip(item.crops.numpy(), item.cell_rows.tolist(), strict=True):
        for k in range(4):
            for flip in (False, True):
                base = _dihedral(originals[row], k, flip, axes=(1, 2))
                bright = base > 0.05
                gains = [np.median(crop[c][bright[c]] / base[c][bright[c]]) for c in range(4)]
                if all(0.8 - 1e-4 <= g <= 1.2 + 1e-4 for g in gains) and np.allclose(
                        crop, np.clip(base * np.array(gains)[:, None, None], 0, 1), atol=1e-5):
                    break
            else:
                continue
            break
        else:
            pytest.fail(f"cell row {row}: not a flipped/rotated crop times per-channel gains in [0.8, 1.2]")


def test_collate_pads_and_maps_cells_back_to_cache_rows(bag_cache: Path) -> None:
    dataset = BagDataset(bag_cache, exclude_flags=())
    items = [dataset[i] for i in (0, 2, 3)]  # 5, 2 and 8 cells
    collated = collate_bags(items)
    batch = collated.batch
    assert batch.crops.shape == (3, 8, 4, 16, 16) and batch.masks.shape == (3, 8, 16, 16)
    assert batch.valid.sum(dim=1).tolist() == [5, 2, 8]
    assert batch.valid.tolist()[1] == [True, True] + [False] * 6
    assert collated.image_indices.tolist() == [0, 2, 3]
    assert batch.labels.shape == (3, NUM_CLASSES)
    assert (collated.cell_rows[~batch.valid] == -1).all()
    assert (batch.crops[~batch.valid] == 0).all() and (batch.masks[~batch.valid] == 0).all()
    cache = CellCache(bag_cache)
    table = cache.cell_table()
    for b in range(3):
        rows = collated.cell_rows[b][batch.valid[b]].numpy()
        assert (table["image_index"].to_numpy()[rows] == collated.image_indices[b].item()).all()
        crops = np.concatenate([cache.cells_of(i)[0] for i in range(cache.num_images)])[rows]
        assert torch.equal(batch.crops[b][batch.valid[b]], torch.from_numpy(crops.astype(np.float32) / 255))
    with pytest.raises(ValueError, match="cannot collate an empty list of bags"):
        collate_bags([])


# ----- split, loss, schedule ----------------------------------------------------------------------------


def test_split_is_stratified_disjoint_and_seeded() -> None:
    labels = np.zeros((40, NUM_CLASSES), dtype=np.uint8)
    labels[:20, 0] = 1
    labels[10:20, 1] = 1
    labels[30:38, 2] = 1
    config = TrainConfig(val_fraction=0.25, seed=4)
    train, val = split_indices(labels, config)
    assert len(val) == 10 and len(train) == 30
    assert set(train).isdisjoint(val) and set(train) | set(val) == set(range(40))
    assert labels[val, 0].sum() == 5 and labels[val, 1].sum() in (2, 3) and labels[val, 2].sum() == 2
    assert np.array_equal(split_indices(labels, config)[1], val)
    assert not np.array_equal(split_indices(labels, replace(config, seed=5))[1], val)
    folds = [split_indices(labels, replace(config, folds=4, fold=f))[1] for f in range(4)]
    assert sorted(np.concatenate(folds).tolist()) == list(range(40))
    assert [int(labels[f, 0].sum()) for f in folds] == [5, 5, 5, 5]
    with pytest.raises(ValueError, match="need at least 2 labelled images to split, got 1"):
        split_indices(labels[:1], config)


def test_losses() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 0.2, 1.5]])
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)
    assert loss_function(logits, targets, TrainConfig(), None) == pytest.approx(float(bce))
    focal0 = loss_function(logits, targets, TrainConfig(loss="focal", focal_gamma=0.0), None)
    assert float(focal0) == pytest.approx(float(bce), rel=1e-6)
    p = torch.sigmoid(logits)
    p_t = p * targets + (1 - p) * (1 - targets)
    expected = float(((1 - p_t) ** 2 * -torch.log(p_t)).mean())
    assert float(loss_function(logits, targets, TrainConfig(loss="focal"), None)) == pytest.approx(expected, rel=1e-5)
    weight = torch.tensor([3.0, 1.0, 1.0])
    weighted = loss_function(logits, targets, TrainConfig(), weight)
    by_hand = -(3 * targets[:, 0] * torch.log(p[:, 0]) + (1 - targets[:, 0]) * torch.log(1 - p[:, 0]))
    rest = -(targets[:, 1:] * torch.log(p[:, 1:]) + (1 - targets[:, 1:]) * torch.log(1 - p[:, 1:]))
    assert float(weighted) == pytest.approx(float((by_hand.sum() + rest.sum()) / 6), rel=1e-5)


def test_learning_rate_warms_up_then_follows_a_cosine() -> None:
    config = TrainConfig(epochs=5, warmup_epochs=1, learning_rate=1.0)
    lr = training_loop.learning_rate
    assert lr(0.0, config) == pytest.approx(0.02)
    assert lr(0.5, config) == pytest.approx(0.5)
    assert lr(1.0, config) == pytest.approx(1.0)
    assert lr(3.0, config) == pytest.approx(0.5)
    assert lr(5.0, config) == pytest.approx(0.0, abs=1e-12)
    assert lr(2.0, config) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"loss": "hinge"}, "loss must be 'bce' or 'focal', got 'hinge'"),
        ({"epochs": 0}, "epochs, batch_size and max_cells must be positive"),
        ({"val_fraction": 1.0}, r"val_fraction must be in \(0, 1\), got 1.0"),
        ({"folds": 3, "fold": 3}, "fold must be in 0..2, got 3"),
    ],
)
def test_train_config_validation(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig(**changes)


# ----- training -----------------------------------------------------------------------------------------


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "weights.safetensors"))


def _history_without_time(metrics: dict) -> list[dict]:
    return [{k: v for k, v in h.items() if k != "seconds"} for h in metrics["history"]]


def test_training_writes_a_complete_model_folder(trained: tuple[Path, dict], square_cache: Path) -> None:
    out, metrics = trained
    for name in (*REQUIRED_FILES, "metrics.csv", "training_curves.png"):
        assert (out / name).is_file(), name
    assert (out / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    lines = (out / "metrics.csv").read_text().splitlines()
    assert lines[0] == "epoch,train_loss,val_loss,val_macro_f1_at_0.5,lr,seconds" and len(lines) == 3
    assert [h["epoch"] for h in metrics["history"]] == [1, 2] and metrics["epochs_run"] == 2
    assert all(math.isfinite(h["train_loss"]) and math.isfinite(h["val_loss"]) for h in metrics["history"])
    assert metrics["n_train_images"] == 12 and metrics["n_val_images"] == 4
    train_ids, val_ids = set(metrics["train_image_ids"]), set(metrics["val_image_ids"])
    assert train_ids.isdisjoint(val_ids) and len(train_ids | val_ids) == 16
    loaded = load_model(out)
    assert replace(loaded.config, channel_mean=None, channel_std=None) == TINY_MODEL  # + measured statistics
    assert loaded.config.channel_mean is not None
    assert loaded.training["epochs"] == 2 and loaded.training["cache"] == str(square_cache)
    assert loaded.training["cache_provenance"]["segmenter"] == "hand"
    assert loaded.thresholds.shape == (NUM_CLASSES,)
    assert loaded.thresholds[2:].tolist() == [0.5] * (NUM_CLASSES - 2)  # no positives: default kept


def test_training_is_deterministic_on_cpu(trained: tuple[Path, dict], square_cache: Path, tmp_path: Path) -> None:
    reference, metrics = trained
    again = train_mil(square_cache, tmp_path / "again", TINY_MODEL, FAST)
    a, b = _weights(reference), _weights(tmp_path / "again")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _history_without_time(again) == _history_without_time(metrics)


def test_rerunning_with_more_epochs_resumes(square_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    one = train_mil(square_cache, out, TINY_MODEL, replace(FAST, epochs=1))
    assert len(one["history"]) == 1 and (out / "checkpoint" / "checkpoint.safetensors").is_file()
    two = train_mil(square_cache, out, TINY_MODEL, FAST)
    assert [h["epoch"] for h in two["history"]] == [1, 2]
    assert two["history"][0] == one["history"][0]


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_an_interrupted_run_resumes_to_the_same_weights(trained: tuple[Path, dict], square_cache: Path,
                                                        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        dropout: float) -> None:
    """Killed after epoch 1's checkpoint, the same command finishes exactly as an uninterrupted run."""
    model = replace(TINY_MODEL, dropout=dropout)
    if dropout:
        reference = tmp_path / "uninterrupted"
        train_mil(square_cache, reference, model, FAST)
    else:
        reference = trained[0]
    save_checkpoint = training_loop.save_training_checkpoint

    def save_then_die(*args: object, **kwargs: object) -> None:
        save_checkpoint(*args, **kwargs)
        raise KeyboardInterrupt

    out = tmp_path / "interrupted"
    monkeypatch.setattr(training_loop, "save_training_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_mil(square_cache, out, model, FAST)
    assert json.loads((out / "checkpoint" / "checkpoint.json").read_text())["epoch"] == 1
    assert not (out / "weights.safetensors").exists()
    monkeypatch.setattr(training_loop, "save_training_checkpoint", save_checkpoint)
    train_mil(square_cache, out, model, FAST)
    a, b = _weights(reference), _weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_focal_loss_and_class_weighting_train(square_cache: Path, tmp_path: Path) -> None:
    config = replace(FAST, epochs=1, loss="focal", class_weighting=True)
    metrics = train_mil(square_cache, tmp_path / "focal", TINY_MODEL, config)
    assert math.isfinite(metrics["history"][0]["train_loss"])
    assert json.loads((tmp_path / "focal" / "config.json").read_text())["training"]["loss"] == "focal"


class _RecordingBags(BagDataset):
    """A BagDataset that appends each training draw (epoch, image, cache rows) to the file named by
    $MIL_TEST_DRAW_LOG; module-level so that DataLoader workers can unpickle it under any start method."""

    def __getitem__(self, item: int) -> BagItem:
        bag = super().__getitem__(item)
        if self.train:
            with open(os.environ["MIL_TEST_DRAW_LOG"], "a") as handle:
                handle.write(f"{self.epoch} {bag.image_index} {','.join(map(str, bag.cell_rows.tolist()))}\n")
        return bag


def test_new_epochs_draw_new_cells_in_dataloader_workers(square_cache: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """With worker processes, each epoch's bags must still follow `set_epoch` (not a stale worker copy)."""
    log = tmp_path / "draws.txt"
    monkeypatch.setenv("MIL_TEST_DRAW_LOG", str(log))
    monkeypatch.setattr(crop_family, "BagDataset", _RecordingBags)
    train_mil(square_cache, tmp_path / "workers", TINY_MODEL, replace(FAST, num_workers=1, max_cells=3))
    draws = [line.split() for line in log.read_text().splitlines()]
    assert len(draws) == 24  # 12 training bags per epoch
    assert sorted({epoch for epoch, _, _ in draws}) == ["0", "1"]
    by_epoch = [{image: rows for epoch, image, rows in draws if epoch == e} for e in ("0", "1")]
    assert by_epoch[0].keys() == by_epoch[1].keys()
    assert any(by_epoch[0][image] != by_epoch[1][image] for image in by_epoch[0])


def test_training_needs_labelled_images(tmp_path: Path) -> None:
    bags = [replace(bag, labels=None) for bag in random_bags(3, seed=1)]
    cache = write_bag_cache(tmp_path / "unlabelled.h5", bags)
    with pytest.raises(ValueError, match=f"{cache}: 0 labelled images; training needs labelled images"):
        train_mil(cache, tmp_path / "out", TINY_MODEL, FAST)


def _evaluate_on_fresh_bags(folder: Path, tmp_path: Path) -> tuple[np.ndarray, list[float], np.ndarray]:
    """Per-class image F1 (classes 0-1, at the fitted thresholds), cell-level AP of the cell logits per class,
    and the fraction of cells carrying each class, for a trained model on 24 new marker images."""
    bags = green_marker_bags(24, seed=100)
    dataset = BagDataset(write_bag_cache(tmp_path / "test.h5", bags))
    collated = collate_bags([dataset[i] for i in range(len(dataset))])
    loaded = load_model(folder)
    with torch.no_grad():
        out = loaded.model(collated.batch)
    probs = torch.sigmoid(out.image_logits).numpy()
    labels = collated.batch.labels.numpy()
    f1 = per_class_f1(labels[:, :2], (probs >= loaded.thresholds)[:, :2])
    cell_logits = out.cell_logits[collated.batch.valid].numpy()
    truth = np.concatenate([bag.cell_classes for bag in bags])
    aps = [float(average_precision_score(truth[:, c], cell_logits[:, c])) for c in (0, 1)]
    return f1, aps, truth[:, :2].mean(axis=0)


def test_training_smoke_learns_the_easy_marker(tmp_path: Path) -> None:
    """Fast: after 8 short epochs on 32 images, the bright-nucleus class (1) is found at image and cell level."""
    cache = write_bag_cache(tmp_path / "train.h5", green_marker_bags(32, seed=0))
    model = replace(TINY_MODEL, head="instance")
    train_mil(cache, tmp_path / "model", model, replace(FAST, epochs=8, batch_size=8, max_cells=6))
    f1, aps, prevalence = _evaluate_on_fresh_bags(tmp_path / "model", tmp_path)
    assert prevalence[1] < 0.25
    assert f1[1] >= 0.8
    assert aps[1] >= 0.9


@pytest.mark.slow
def test_training_learns_cells_from_image_labels(tmp_path: Path) -> None:
    """The marker task with the default head: image labels only, yet image F1 and the cell-level AP of both
    classes end far above chance (cell prevalence < 0.25)."""
    cache = write_bag_cache(tmp_path / "train.h5", green_marker_bags(64, seed=1))
    train_mil(cache, tmp_path / "model", replace(TINY_MODEL, head=MILConfig().head),
              replace(FAST, epochs=16, batch_size=8, max_cells=6))
    f1, aps, prevalence = _evaluate_on_fresh_bags(tmp_path / "model", tmp_path)
    assert (prevalence < 0.25).all()
    assert min(f1) >= 0.9
    assert min(aps) >= 0.9


def test_negative_cell_loss_uses_only_absent_classes_of_real_cells() -> None:
    from mil.training import negative_cell_loss

    cell_logits = torch.tensor([[[2.0, -1.0], [0.5, 3.0], [9.0, 9.0]]])  # B=1, N=3 (last = padding), K=2
    valid = torch.tensor([[True, True, False]])
    labels = torch.tensor([[1.0, 0.0]])  # class 0 present, class 1 absent
    expected = torch.nn.functional.softplus(torch.tensor([-1.0, 3.0])).mean()  # BCE(logit, 0) = softplus(logit)
    assert torch.allclose(negative_cell_loss(cell_logits, valid, labels), expected)
    assert float(negative_cell_loss(cell_logits, valid, torch.ones(1, 2))) == 0.0  # nothing absent


def test_resuming_with_other_settings_is_refused(square_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train_mil(square_cache, out, TINY_MODEL, replace(FAST, epochs=1))
    with pytest.raises(ValueError, match=f"^{re.escape(str(out / 'checkpoint'))} was written by a run with other "
                       "settings; resume with the same settings \\(only --epochs may change\\)"):
        train_mil(square_cache, out, TINY_MODEL, replace(FAST, learning_rate=1e-2))


# ----- cell supervision (the upper bound) and input standardisation -------------------------------------



def test_cell_supervised_training_learns_both_markers_per_cell(tmp_path: Path) -> None:
    """Per-cell labels train the cells directly: after 6 short epochs both marker classes rank the right cells."""
    bags = green_marker_bags(32, seed=0)
    cache = write_bag_cache(tmp_path / "train.h5", bags)
    labels = write_cell_labels(bags, tmp_path / "cells.csv")
    train_mil(cache, tmp_path / "model", replace(TINY_MODEL, head="instance"),
              replace(FAST, epochs=6, batch_size=8, max_cells=6, cell_labels=str(labels)))
    f1, aps, prevalence = _evaluate_on_fresh_bags(tmp_path / "model", tmp_path)
    assert (prevalence < 0.25).all()
    assert min(aps) >= 0.9


def test_cell_labels_must_cover_every_training_cell(tmp_path: Path) -> None:
    bags = green_marker_bags(8, seed=0)
    cache = write_bag_cache(tmp_path / "train.h5", bags)
    labels = write_cell_labels(bags, tmp_path / "cells.csv")
    config = replace(FAST, epochs=1, val_fraction=0.5, seed=0, cell_labels=str(labels))
    with CellCache(cache) as opened:
        first_training_image = opened.image_ids[int(split_indices(opened.labels, config)[0][0])]
    text = labels.read_text().splitlines()
    labels.write_text("\n".join(line for line in text if ",2," not in line) + "\n")  # cell 2 of every image
    with pytest.raises(ValueError, match=re.escape(
            f"{labels} has no labels for cell 2 of image '{first_training_image}' in {cache}; cell ids must be the "
            "cache's (segment with --segmenter masks)")):
        train_mil(cache, tmp_path / "model", TINY_MODEL, config)
    labels.write_text("image_id,cell_id,labels\nimg000,1,3 x\n")
    with pytest.raises(ValueError, match=re.escape(f"{labels}, line 2: labels '3 x' are not space-separated "
                                                   "class ids")):
        train_mil(cache, tmp_path / "model2", TINY_MODEL, config)


def test_training_measures_and_saves_the_input_standardisation(trained: tuple[Path, dict], square_cache: Path) -> None:
    from mil.bags import measure_channel_statistics

    folder, _ = trained
    saved = json.loads((folder / "config.json").read_text())["model"]
    dataset = BagDataset(square_cache)
    crops = np.concatenate([dataset.cache.cells_of(i)[0][rows] for i, rows in
                            zip(dataset.image_indices, dataset._local_rows, strict=True)]) / 255.0
    # 16 images: the default sample of 200 images covers all of them, so the statistics are exact
    mean, std = measure_channel_statistics(dataset, seed=0)
    np.testing.assert_allclose(mean, crops.mean(axis=(0, 2, 3)), rtol=1e-9)
    np.testing.assert_allclose(std, crops.std(axis=(0, 2, 3)), rtol=1e-6)
    assert len(saved["channel_mean"]) == 4 and len(saved["channel_std"]) == 4
    assert saved["channel_mean"][1] > 0 and min(saved["channel_std"]) > 0
    loaded = load_model(folder)
    assert loaded.model.config.channel_mean == tuple(saved["channel_mean"])
    x = torch.rand(2, 4, 8, 8)
    expected = (x - torch.tensor(saved["channel_mean"]).view(1, 4, 1, 1)) / torch.tensor(
        saved["channel_std"]).view(1, 4, 1, 1)
    assert torch.allclose(loaded.model.standardise(x), expected)


def test_channel_statistics_config_errors() -> None:
    from mil.config import ConfigError

    with pytest.raises(ConfigError, match="^channel_mean and channel_std must be given together$"):
        MILConfig(channel_mean=(0.1, 0.1, 0.1, 0.1))
    with pytest.raises(ConfigError, match=re.escape("channel_mean and channel_std need 4 values (red, green, blue, "
                                                    "yellow), got 3 and 4")):
        MILConfig(channel_mean=(0.1, 0.1, 0.1), channel_std=(1, 1, 1, 1))
    with pytest.raises(ConfigError, match=re.escape("channel_std must be positive, got (1.0, 0.0, 1.0, 1.0)")):
        MILConfig(channel_mean=(0, 0, 0, 0), channel_std=(1, 0, 1, 1))


def test_a_checkpoint_written_before_dense_window_still_resumes(square_cache: Path, tmp_path: Path) -> None:
    """Checkpoints from before TrainConfig.dense_window lack the key; it reads as None (what those runs used)."""
    import json

    out = tmp_path / "run"
    train_mil(square_cache, out, TINY_MODEL, replace(FAST, epochs=1))
    state_path = out / "checkpoint" / "checkpoint.json"
    state = json.loads(state_path.read_text())
    del state["settings"]["training"]["dense_window"]
    state_path.write_text(json.dumps(state))
    (state_path.parent / "checkpoint.manifest.json").unlink()  # such checkpoints had no manifest
    metrics = train_mil(square_cache, out, TINY_MODEL, replace(FAST, epochs=2))
    assert metrics["epochs_run"] == 2
