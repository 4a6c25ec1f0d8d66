"""Whole fields with their cell label maps, read from the cell cache for the dense model, and their collate.

A field item is the working-size image (schema-2 cache, `CellCache.full_image`) fitted to the model's square input
(`fit_field`: longer side resized to `input_size`, the rest zero-padded; the label map resized by nearest
neighbour, a cell that would vanish kept as one pixel at its centroid) plus the ids of the cells to pool. Cells whose
QC flags are excluded are not pooled: their pixels count as background. Training augments the whole field (flips,
90-degree rotations, the same for image and labels; per-channel gain jitter) and, with a training `window`, shows a
random square window of the fitted field instead of all of it (`random_window`): the network then trains at the
input size's resolution for the cost of the window, and predicts whole fields, being fully convolutional. The
collate pads the cell lists and returns a validity mask; it never concatenates fields.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from hpa_cells.cache import CellCache
from hpa_cells.images import resize_image, resize_mask
from hpa_cells.qc_flags import DEFAULT_EXCLUDE_FLAGS
from mil.bags import CacheImageDataset, pinned
from mil.dense_model import DenseBatch


@dataclass(frozen=True)
class FittedField:
    """A field at the model's input size. image `4,S,S` float32 in [0, 1]; cell_labels `S,S` int64 (0 outside
    cells and in the padding); content_hw: the `h,w` corner holding the field (the rest is padding)."""

    image: np.ndarray
    cell_labels: np.ndarray
    content_hw: tuple[int, int]


def fit_field(image_chw: np.ndarray, cells_hw: np.ndarray, input_size: int,
              keep_cells: np.ndarray | None = None) -> FittedField:
    """Resize a `4,H,W` uint8 field and its `H,W` label map so the longer side is `input_size`, and pad to square.

    keep_cells: ids that must keep at least one pixel (default: every id in the map); one that nearest-neighbour
    shrinking removes gets the pixel at its centroid. ValueError names the cell if that pixel is taken too.
    """
    height, width = cells_hw.shape
    if image_chw.shape != (4, height, width):
        raise ValueError(f"field {image_chw.shape} does not match its label map {cells_hw.shape}")
    scale = input_size / max(height, width)
    content = (max(1, round(height * scale)), max(1, round(width * scale)))
    image = resize_image(image_chw, content) if content != (height, width) else image_chw
    labels = resize_mask(cells_hw, content) if content != (height, width) else cells_hw
    labels = labels.astype(np.int64)
    wanted = np.unique(cells_hw[cells_hw > 0]) if keep_cells is None else np.asarray(keep_cells, dtype=np.int64)
    vanished = np.setdiff1d(wanted, labels)
    if vanished.size:
        labels = labels.copy()
        for cell_id in vanished:
            ys, xs = np.nonzero(cells_hw == cell_id)
            if ys.size == 0:
                raise ValueError(f"cell {int(cell_id)} is not in the label map")
            y = min(content[0] - 1, int(ys.mean() * content[0] / height))
            x = min(content[1] - 1, int(xs.mean() * content[1] / width))
            labels[y, x] = cell_id
        lost = np.setdiff1d(wanted, labels)
        if lost.size:
            raise ValueError(f"cells {lost.tolist()[:5]} vanish at input size {input_size}; use a larger input size")
    out_image = np.zeros((4, input_size, input_size), dtype=np.float32)
    out_image[:, : content[0], : content[1]] = image.astype(np.float32) / 255.0
    out_labels = np.zeros((input_size, input_size), dtype=np.int64)
    out_labels[: content[0], : content[1]] = labels
    return FittedField(out_image, out_labels, content)


@dataclass(frozen=True)
class FieldItem:
    """One field. image `4,S,S`; cell_labels `S,S`; cell_ids `N` (labels of the cells in the bag); usable `N`
    bool (pooled into the image prediction); labels `K` (zeros if unlabelled); cell_rows `N`: cache rows (or -1)."""

    image_index: int
    image: torch.Tensor
    cell_labels: torch.Tensor
    cell_ids: torch.Tensor
    usable: torch.Tensor
    labels: torch.Tensor
    cell_rows: torch.Tensor


def augment_field(image_chw: np.ndarray, cells_hw: np.ndarray, rng: np.random.Generator,
                  jitter: float) -> tuple[np.ndarray, np.ndarray]:
    """A random flip + 90-degree rotation of the whole field (image and labels together) and a per-channel gain."""
    k, flip = int(rng.integers(4)), bool(rng.integers(2))
    image, labels = np.rot90(image_chw, k, axes=(1, 2)), np.rot90(cells_hw, k)
    if flip:
        image, labels = image[:, :, ::-1], labels[:, ::-1]
    image = np.ascontiguousarray(image)
    if jitter > 0:
        gains = rng.uniform(1 - jitter, 1 + jitter, size=(image.shape[0], 1, 1))
        image = np.clip(image * gains, 0, 255).astype(np.uint8)
    return image, np.ascontiguousarray(labels)


def random_window(fitted: FittedField, cell_ids: np.ndarray, window: int,
                  rng: np.random.Generator) -> tuple[FittedField, np.ndarray]:
    """A random `window` x `window` part of a fitted field that holds at least one of `cell_ids`, and the mask of
    the cells (over `cell_ids`) with pixels in it; they pool only their pixels inside the window.

    Placement: a random cell of `cell_ids`, a random pixel of it, then a uniformly random window position that
    holds that pixel; so every cell can be seen and no window is empty. Raises ValueError when `cell_ids` is empty
    or the drawn cell has no pixel in the field (every id must be in the label map, as `fit_field` ensures).
    """
    size = fitted.cell_labels.shape[0]
    if not 0 < window <= size:
        raise ValueError(f"window {window} must be in 1..{size} (the input size)")
    if window == size:
        return fitted, np.isin(cell_ids, fitted.cell_labels)
    if len(cell_ids) == 0:
        raise ValueError("a training window needs at least one cell to hold; this field has none")
    anchor_cell = int(cell_ids[int(rng.integers(len(cell_ids)))])
    ys, xs = np.nonzero(fitted.cell_labels == anchor_cell)
    if len(ys) == 0:
        raise ValueError(f"no pixel of cell {anchor_cell} in the field; cannot place a training window")
    pick = int(rng.integers(len(ys)))
    y0 = int(rng.integers(max(0, ys[pick] - window + 1), min(ys[pick], size - window) + 1))
    x0 = int(rng.integers(max(0, xs[pick] - window + 1), min(xs[pick], size - window) + 1))
    labels = fitted.cell_labels[y0:y0 + window, x0:x0 + window]
    inside = np.isin(cell_ids, labels)
    content = (max(0, min(window, fitted.content_hw[0] - y0)), max(0, min(window, fitted.content_hw[1] - x0)))
    part = FittedField(np.ascontiguousarray(fitted.image[:, y0:y0 + window, x0:x0 + window]),
                       np.ascontiguousarray(labels), content)
    return part, inside


class DenseFieldDataset(CacheImageDataset):
    """Fields of the images `image_indices` of a schema-2 cell cache, with their usable cells. `window` (training
    only, a multiple of 32 <= `input_size`): show a random window of each fitted field (`random_window`) with the
    cells that have pixels in it; None or `input_size` shows the whole field."""

    def __init__(self, cache_path: str | os.PathLike[str], image_indices: Sequence[int] | None = None,
                 input_size: int = 256, train: bool = False, seed: int = 0,
                 exclude_flags: Sequence[str] = DEFAULT_EXCLUDE_FLAGS, intensity_jitter: float = 0.2,
                 window: int | None = None) -> None:
        if window is not None and (window < 32 or window % 32 or window > input_size):
            raise ValueError(f"training window must be a multiple of 32 between 32 and the input size {input_size}, "
                             f"got {window}")
        with CellCache(cache_path) as cache:
            cache.require_full_images("the dense model (--family dense)")
        super().__init__(cache_path, image_indices, train, seed, exclude_flags, intensity_jitter)
        self._cell_ids = self.cache.cell_table()["cell_id"].to_numpy(dtype=np.int64)
        self.input_size = input_size
        self.window = window

    def __getitem__(self, item: int) -> FieldItem:
        index = self.image_indices[item]
        rows = self._local_rows[item] + int(self.cache.cell_slice(index).start)
        cell_ids = self._cell_ids[rows]
        image = self.cache.full_image(index)
        cells_hw, _ = self.cache.full_masks(index)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        if self.train:
            image, cells_hw = augment_field(image, cells_hw, rng, self.intensity_jitter)
        fitted = fit_field(image, cells_hw, self.input_size, keep_cells=cell_ids)
        if self.train and self.window is not None and self.window < self.input_size:
            fitted, inside = random_window(fitted, cell_ids, self.window, rng)
            cell_ids, rows = cell_ids[inside], rows[inside]
        return FieldItem(index, torch.from_numpy(fitted.image), torch.from_numpy(fitted.cell_labels),
                         torch.from_numpy(cell_ids), torch.ones(len(cell_ids), dtype=torch.bool),
                         torch.from_numpy(self.cache.labels[index].astype(np.float32)), torch.from_numpy(rows))


@dataclass
class CollatedFields:
    """A padded batch plus what is needed to map outputs back to cells (as `mil.bags.CollatedBags`)."""

    batch: DenseBatch
    image_indices: torch.Tensor
    cell_rows: torch.Tensor
    """`B,N` cache rows of the cells, -1 at padding."""
    usable: torch.Tensor
    """`B,N` bool: cells pooled into the image prediction (False at padding)."""

    def pin_memory(self) -> CollatedFields:
        """The batch in page-locked memory (what `DataLoader(pin_memory=True)` calls), for asynchronous copies."""
        return pinned(self)


def collate_fields(items: Sequence[FieldItem]) -> CollatedFields:
    """Stack the fields and pad their cell lists to the longest; `valid` marks real cells."""
    if not items:
        raise ValueError("cannot collate an empty list of fields")
    n = max(len(item.cell_ids) for item in items)
    b = len(items)
    cell_ids = torch.zeros((b, n), dtype=torch.long)
    valid = torch.zeros((b, n), dtype=torch.bool)
    usable = torch.zeros((b, n), dtype=torch.bool)
    rows = torch.full((b, n), -1, dtype=torch.long)
    for i, item in enumerate(items):
        k = len(item.cell_ids)
        cell_ids[i, :k], valid[i, :k], usable[i, :k], rows[i, :k] = item.cell_ids, True, item.usable, item.cell_rows
    batch = DenseBatch(torch.stack([item.image for item in items]), torch.stack([item.cell_labels for item in items]),
                       cell_ids, valid, torch.stack([item.labels for item in items]))
    indices = torch.tensor([item.image_index for item in items], dtype=torch.long)
    return CollatedFields(batch, indices, rows, usable)
