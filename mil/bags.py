"""Bags of cells read from the HDF5 cell cache, and the padding collate.

A bag is the cells of one image. Training draws up to `max_cells` of them at random (fresh each epoch) and
augments each cell independently (flips, 90-degree rotations, per-channel intensity jitter); evaluation uses
all cells, unaugmented. Cells whose QC flags intersect `exclude_flags` (by default: fragments and cells without
a nucleus) are left out of bags. The collate pads bags to the longest one in the batch and returns a
validity mask; it never concatenates bags.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from hpa_cells.cache import CellCache
from hpa_cells.qc_flags import DEFAULT_EXCLUDE_FLAGS, flag_bits
from mil.model import BagBatch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BagItem:
    """One bag. crops `N,4,S,S` float32 in [0, 1]; masks `N,S,S` float32; labels `K` float32 (zeros if
    unlabelled); cell_rows: the bag's cells as rows of the cache's per-cell tables."""

    image_index: int
    crops: torch.Tensor
    masks: torch.Tensor
    labels: torch.Tensor
    cell_rows: torch.Tensor
    cell_labels: torch.Tensor | None = None
    """`N,K` per-cell labels, only when the dataset was given a cell label matrix."""


def excluded_bits(cache: CellCache, names: Sequence[str]) -> int:
    """The QC bitmask of the named flags (case-insensitive), checked against the cache's flag names."""
    return flag_bits(names, cache.qc_flag_names, cache_path=cache.path)


def usable_cell_rows(cache: CellCache, image_indices: Sequence[int] | None,
                     exclude_flags: Sequence[str]) -> tuple[list[int], list[np.ndarray]]:
    """(images with at least one usable cell, each one's usable cells as positions within the image).

    Images whose cells are all excluded by QC are left out with a warning naming them.
    """
    table = cache.cell_table()
    bits = excluded_bits(cache, exclude_flags) if exclude_flags else 0
    usable = (table["qc_flags"].to_numpy().astype(np.int64) & bits) == 0
    offsets = cache.image_table()["offset"].to_numpy()
    per_image = table.groupby("image_index").indices
    indices = range(cache.num_images) if image_indices is None else image_indices
    kept: list[int] = []
    local_rows: list[np.ndarray] = []
    dropped = []
    for index in indices:
        rows = np.asarray(per_image.get(int(index), []), dtype=np.int64)
        rows = rows[usable[rows]] if rows.size else rows
        if rows.size == 0:
            dropped.append(cache.image_ids[int(index)])
            continue
        kept.append(int(index))
        local_rows.append(rows - int(offsets[int(index)]))
    if dropped:
        logger.warning("%d images have no usable cells after QC and are left out: %s",
                       len(dropped), ", ".join(dropped[:5]))
    return kept, local_rows


class CacheImageDataset(Dataset):
    """The images `image_indices` of a cell cache that have usable cells, one item per image (each DataLoader
    worker opens the file itself); the base of the crop family's bags and the dense family's fields.
    `labels` `M,K` float32 are the kept images' labels; `set_epoch` makes random draws depend on the epoch."""

    def __init__(self, cache_path: str | os.PathLike[str], image_indices: Sequence[int] | None = None,
                 train: bool = False, seed: int = 0, exclude_flags: Sequence[str] = DEFAULT_EXCLUDE_FLAGS,
                 intensity_jitter: float = 0.2) -> None:
        self.cache = CellCache(cache_path)
        self.image_indices, self._local_rows = usable_cell_rows(self.cache, image_indices, exclude_flags)
        self.train = train
        self.seed = seed
        self.epoch = 0
        self.intensity_jitter = intensity_jitter
        self.labels = self.cache.labels[self.image_indices].astype(np.float32)

    def set_epoch(self, epoch: int) -> None:
        """Make the random draws and augmentation depend on the epoch (call before each epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.image_indices)


class BagDataset(CacheImageDataset):
    """Bags of the images `image_indices` of a cell cache; training draws up to `max_cells` cells per bag."""

    def __init__(self, cache_path: str | os.PathLike[str], image_indices: Sequence[int] | None = None,
                 max_cells: int | None = None, train: bool = False, seed: int = 0,
                 exclude_flags: Sequence[str] = DEFAULT_EXCLUDE_FLAGS, intensity_jitter: float = 0.2,
                 cell_labels: np.ndarray | None = None) -> None:
        super().__init__(cache_path, image_indices, train, seed, exclude_flags, intensity_jitter)
        self.max_cells = max_cells
        self.cell_labels = cell_labels  # `num_cells,K` in cache order, for cell-supervised training

    def __getitem__(self, item: int) -> BagItem:
        index = self.image_indices[item]
        local = self._local_rows[item]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        if self.train and self.max_cells is not None and local.size > self.max_cells:
            local = np.sort(rng.choice(local, size=self.max_cells, replace=False))
        crops, masks = self.cache.cells_of(index)
        crops, masks = crops[local], masks[local]
        x = crops.astype(np.float32) / 255.0
        m = masks.astype(np.float32)
        if self.train:
            x, m = augment_cells(x, m, rng, self.intensity_jitter)
        offset = int(self.cache.cell_slice(index).start)
        cell_labels = None if self.cell_labels is None else torch.from_numpy(self.cell_labels[local + offset])
        return BagItem(index, torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(m)),
                       torch.from_numpy(self.cache.labels[index].astype(np.float32)),
                       torch.from_numpy(local + offset), cell_labels)


def augment_cells(crops: np.ndarray, masks: np.ndarray, rng: np.random.Generator,
                  jitter: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-cell random flip + 90-degree rotation (same for crop and mask) and per-channel gain jitter."""
    out_c, out_m = np.empty_like(crops), np.empty_like(masks)
    for i in range(crops.shape[0]):
        k, flip = int(rng.integers(4)), bool(rng.integers(2))
        c, m = np.rot90(crops[i], k, axes=(1, 2)), np.rot90(masks[i], k, axes=(0, 1))
        if flip:
            c, m = c[:, :, ::-1], m[:, ::-1]
        out_c[i], out_m[i] = c, m
    if jitter > 0:
        gains = rng.uniform(1 - jitter, 1 + jitter, size=(crops.shape[0], crops.shape[1], 1, 1)).astype(np.float32)
        out_c = np.clip(out_c * gains, 0.0, 1.0)
    return out_c, out_m


def measure_channel_statistics(dataset: CacheImageDataset, source: str = "crops", max_images: int = 200,
                               seed: int = 0) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation (intensities in [0, 1]) of up to `max_images` of the dataset's
    images, drawn with `seed`: over their usable cells' crops (`source="crops"`) or their full working-size
    images (`"fields"`, schema-2 caches). What the models standardise their input with. Only the dataset's
    images count (`image_indices`), never extra items such as mosaic bags."""
    if source not in ("crops", "fields"):
        raise ValueError(f"source must be 'crops' or 'fields', got {source!r}")
    n_images = len(dataset.image_indices)  # a dataset may hold more items than images (mosaic bags)
    if n_images == 0:
        raise ValueError(f"{dataset.cache.path}: no images to measure channel statistics on")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(n_images, size=min(max_images, n_images), replace=False)
    total = np.zeros(4)
    total_sq = np.zeros(4)
    count = 0
    for item in np.sort(chosen):
        index = dataset.image_indices[int(item)]
        if source == "crops":
            crops, _ = dataset.cache.cells_of(index)
            x = crops[dataset._local_rows[int(item)]].astype(np.float64) / 255.0
        else:
            x = dataset.cache.full_image(index)[None].astype(np.float64) / 255.0
        total += x.sum(axis=(0, 2, 3))
        total_sq += (x * x).sum(axis=(0, 2, 3))
        count += x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean * mean, 0.0))
    std = np.maximum(std, 1e-3)  # an empty channel must not divide by zero
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


@dataclass
class CollatedBags:
    """A padded batch plus what is needed to map outputs back to cells."""

    batch: BagBatch
    image_indices: torch.Tensor
    cell_rows: torch.Tensor
    """`B,N` cache rows of the cells, -1 at padding."""
    cell_labels: torch.Tensor | None = None
    """`B,N,K` per-cell labels (zeros at padding), when the bags carry them."""

    def pin_memory(self) -> CollatedBags:
        """The batch in page-locked memory (what `DataLoader(pin_memory=True)` calls), for asynchronous copies."""
        return pinned(self)


def pinned(value: Any) -> Any:
    """`value` with every tensor in page-locked (pinned) memory: a tensor, or a dataclass whose fields are
    tensors, None or such dataclasses (a collated batch); anything else is returned as it is."""
    if isinstance(value, torch.Tensor):
        return value.pin_memory()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(value, **{f.name: pinned(getattr(value, f.name))
                                             for f in dataclasses.fields(value) if f.init})
    return value


def collate_bags(items: Sequence[BagItem]) -> CollatedBags:
    """Pad bags to the longest in the batch; `valid` marks real cells. Per-cell labels: zeros at padding, NaN
    (unknown) for the cells of a bag that carries none beside bags that do."""
    if not items:
        raise ValueError("cannot collate an empty list of bags")
    n = max(item.crops.shape[0] for item in items)
    b = len(items)
    _, c, s, _ = items[0].crops.shape
    crops = torch.zeros((b, n, c, s, s), dtype=torch.float32)
    masks = torch.zeros((b, n, s, s), dtype=torch.float32)
    valid = torch.zeros((b, n), dtype=torch.bool)
    rows = torch.full((b, n), -1, dtype=torch.long)
    for i, item in enumerate(items):
        k = item.crops.shape[0]
        crops[i, :k], masks[i, :k], valid[i, :k], rows[i, :k] = item.crops, item.masks, True, item.cell_rows
    labels = torch.stack([item.labels for item in items])
    indices = torch.tensor([item.image_index for item in items], dtype=torch.long)
    cell_labels = None
    if any(item.cell_labels is not None for item in items):  # a bag without them (a mosaic): unknown (NaN)
        cell_labels = torch.zeros((b, n, labels.shape[1]), dtype=torch.float32)
        for i, item in enumerate(items):
            k = item.crops.shape[0]
            cell_labels[i, :k] = item.cell_labels if item.cell_labels is not None else float("nan")
    return CollatedBags(BagBatch(crops, masks, valid, labels), indices, rows, cell_labels)
