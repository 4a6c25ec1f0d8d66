"""Training windows of the dense family (`mil.dense_fields.random_window`, `DenseFieldDataset(window=...)`): a
window always holds a cell, its cells are exactly those with pixels in it, and it is the same slice of image and
labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hpa_cells.synthetic.dataset import SyntheticConfig, write_dataset
from mil.dense_fields import DenseFieldDataset, FittedField, random_window
from segmentation.segment_to_cache import SegmentJob, segment_folder
from segmentation.watershed import WatershedSegmenter


def _field() -> FittedField:
    """64 x 64: cells 1-3 in three corners, 4 a 2-pixel cell in the fourth; each image pixel encodes (y, x)."""
    labels = np.zeros((64, 64), dtype=np.int64)
    labels[2:20, 2:20], labels[2:20, 44:62], labels[44:62, 2:20], labels[60:62, 60:62] = 1, 2, 3, 4
    ys, xs = np.mgrid[0:64, 0:64]
    image = np.stack([ys, xs, ys * 0, xs * 0]).astype(np.float32)
    return FittedField(image, labels, (64, 64))


def test_a_window_holds_its_cells_and_the_same_slice_of_image_and_labels() -> None:
    field, ids = _field(), np.array([1, 2, 3, 4])
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(200):
        part, inside = random_window(field, ids, 32, rng)
        assert part.image.shape == (4, 32, 32) and part.cell_labels.shape == (32, 32)
        present = set(np.unique(part.cell_labels).tolist()) - {0}
        assert present and present == set(ids[inside].tolist())  # never empty; mask = cells with pixels inside
        y0, x0 = int(part.image[0, 0, 0]), int(part.image[1, 0, 0])
        np.testing.assert_array_equal(part.cell_labels, field.cell_labels[y0:y0 + 32, x0:x0 + 32])
        np.testing.assert_array_equal(part.image[0], np.arange(y0, y0 + 32)[:, None] * np.ones((1, 32)))
        assert part.content_hw == (32, 32)
        seen |= present
    assert seen == {1, 2, 3, 4}  # the 2-pixel cell is reached too


def test_a_full_size_window_is_the_field_and_bad_windows_are_errors() -> None:
    field = _field()
    part, inside = random_window(field, np.array([1, 2, 9]), 64, np.random.default_rng(0))
    assert part is field and inside.tolist() == [True, True, False]
    with pytest.raises(ValueError, match=r"^window 96 must be in 1\.\.64 \(the input size\)$"):
        random_window(field, np.array([1]), 96, np.random.default_rng(0))
    with pytest.raises(ValueError, match="^no pixel of cell 9 in the field; cannot place a training window$"):
        random_window(field, np.array([9]), 32, np.random.default_rng(0))
    with pytest.raises(ValueError, match="^a training window needs at least one cell to hold; this field has none$"):
        random_window(field, np.array([], dtype=np.int64), 32, np.random.default_rng(0))


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("window")
    write_dataset(root / "synthetic", 2, SyntheticConfig(seed=3, size=256))
    path = root / "cells.h5"
    segment_folder(SegmentJob(root / "synthetic", path, labels_path=root / "synthetic" / "train.csv", working_size=256),
                   WatershedSegmenter())
    return path


def test_the_dataset_windows_training_fields_only(cache: Path) -> None:
    train = DenseFieldDataset(cache, input_size=128, train=True, window=64)
    whole = DenseFieldDataset(cache, input_size=128, train=False, window=64)
    for item in range(len(train)):
        windowed, full = train[item], whole[item]
        assert tuple(windowed.image.shape) == (4, 64, 64) and tuple(full.image.shape) == (4, 128, 128)
        present = set(np.unique(windowed.cell_labels.numpy()).tolist()) - {0}
        ids = windowed.cell_ids.tolist()
        assert ids and set(ids) == present & set(full.cell_ids.tolist())  # every pooled cell in the window, no other
        assert len(windowed.cell_rows) == len(ids) == int(windowed.usable.sum())
        rows_of = dict(zip(full.cell_ids.tolist(), full.cell_rows.tolist(), strict=True))
        assert windowed.cell_rows.tolist() == [rows_of[i] for i in ids]  # rows follow their cells
    with pytest.raises(ValueError, match="^training window must be a multiple of 32 between 32 and the input size "
                                         "128, got 48$"):
        DenseFieldDataset(cache, input_size=128, window=48)
