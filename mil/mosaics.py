"""Mosaic bags: bags that mix the cells of several single-label images, so every cell has a known truth.

An image with exactly one positive class (a single-label image) has, nearly always, only cells positive for it. A
mosaic draws 2-4 such images WITH DIFFERENT labels (from one or several cell caches) and puts their usable cells
(QC exclusion as in training) into one bag: the bag's label is the union of the sources' labels, each cell's truth
its source image's label. That gives real cells with per-cell truth (cell-level mAP on real fields) and extra
training bags whose cells come from images with different labels.

- `single_label_images(caches, allowed_ids, ...)`: the candidates, restricted to `allowed_ids` (one CV fold's
  fields, say) so held-out images never enter training mosaics and training images never enter held-out ones.
- `draw_mosaics(images, n, min_sources, max_sources, seed)`: `Mosaic` records (seeded, deterministic; mosaic i
  depends on (seed, i) only). `mosaic_cell_truth(mosaics)`: the per-cell truth table.
- `MosaicDataset(caches, mosaics, ...)`: `mil.bags.BagItem`s, collated by `mil.bags.collate_bags` like any bag.
- `BagsWithMosaics`: a training `BagDataset` plus `mosaic_bags` mosaics drawn afresh each epoch from its own
  (training) images only; what `TrainConfig.mosaic_bags` turns on (crop family).
- `score_mosaic_cells(cell_probs, truth)`: cell-level mAP against the truth (`hpa_cells.metrics` primitives).
Prediction over mosaics with a trained model is `mil.mosaic_evaluation`; the leak baseline `mil.leak_baseline`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from hpa_cells.cache import CellCache
from hpa_cells.classes import CLASS_NAMES, NUM_CLASSES
from hpa_cells.metrics import MatchedCells, cell_map_of
from hpa_cells.qc_flags import DEFAULT_EXCLUDE_FLAGS
from mil.bags import BagDataset, BagItem, augment_cells, usable_cell_rows

logger = logging.getLogger(__name__)

CacheLike = CellCache | str | os.PathLike[str]
"""A cell cache, open or as its path."""

class MosaicDrawError(ValueError):
    """Training mosaic bags cannot be drawn from the training images (too few single-label images of different
    labels); the message names the cache."""


DEFAULT_MOSAIC_FRACTION = 0.25
"""Mosaic bags per training image of the default recipe (`train.py --mosaic-fraction auto`). On the MIL benchmark
one mosaic bag per four training images raised the gated cell mAP from 0.405 to 0.476, +0.071 with a 95% paired
bootstrap interval of [+0.046, +0.109] over the 164 validation images, and the image macro F1 from 0.574 to 0.638,
for 1.25x the cells per epoch (BENCHMARKS.md "Weak supervision"); fine-tuning (`--init`) keeps 0."""


@dataclass(frozen=True)
class SingleLabelImage:
    """An image with exactly one positive class: `class_id`; `cell_rows`: its usable cells (after QC exclusion)
    as rows of its cache's per-cell tables, increasing."""

    cache_index: int
    image_id: str
    class_id: int
    cell_rows: tuple[int, ...]


@dataclass(frozen=True)
class MosaicSource:
    """One source of a mosaic: an image of cache `cache_index` (its position in the caches list) and the cells
    taken from it, as rows of that cache's per-cell tables (increasing); all of them have truth `class_id`."""

    cache_index: int
    image_id: str
    class_id: int
    cell_rows: tuple[int, ...]


@dataclass(frozen=True)
class Mosaic:
    """A bag of the cells of 2-4 single-label images with different labels; cells in source order."""

    mosaic_id: str
    sources: tuple[MosaicSource, ...]

    @property
    def class_ids(self) -> tuple[int, ...]:
        """The sources' classes (all different), in source order."""
        return tuple(s.class_id for s in self.sources)

    @property
    def n_cells(self) -> int:
        return sum(len(s.cell_rows) for s in self.sources)

    def labels(self, num_classes: int = NUM_CLASSES) -> np.ndarray:
        """`K` float32 multi-hot bag label: the union of the sources' labels."""
        out = np.zeros(num_classes, dtype=np.float32)
        out[list(self.class_ids)] = 1.0
        return out


def open_caches(caches: Sequence[CacheLike]) -> list[CellCache]:
    """Each entry as an open `CellCache` (paths are opened, open caches kept)."""
    if isinstance(caches, str | os.PathLike | CellCache):
        raise TypeError("caches must be a list of cell caches or their paths, not a single one")
    return [c if isinstance(c, CellCache) else CellCache(Path(c)) for c in caches]


def single_label_images(caches: Sequence[CacheLike], allowed_ids: Collection[str] | None = None,
                        exclude_flags: Sequence[str] = DEFAULT_EXCLUDE_FLAGS,
                        min_cells: int = 1) -> list[SingleLabelImage]:
    """The labelled images with exactly one positive class in `caches` (in cache, then storage order), only those
    whose id is in `allowed_ids` (all when None), with at least `min_cells` usable cells after excluding the QC
    flags `exclude_flags`. Allowed ids found in none of the caches are logged."""
    if min_cells < 1:
        raise ValueError(f"min_cells must be >= 1, got {min_cells}")
    if isinstance(allowed_ids, str):
        raise TypeError(f"allowed_ids must be a collection of image ids, not the single string {allowed_ids!r}")
    allowed = None if allowed_ids is None else set(allowed_ids)
    found: set[str] = set()
    images: list[SingleLabelImage] = []
    too_few = 0
    for cache_index, cache in enumerate(open_caches(caches)):
        ids = cache.image_ids
        found.update(ids)
        single = cache.has_labels & (cache.labels.sum(axis=1) == 1)
        candidates = [i for i in np.flatnonzero(single) if allowed is None or ids[i] in allowed]
        if not candidates:
            continue
        kept, local_rows = usable_cell_rows(cache, candidates, exclude_flags)
        labels = cache.labels
        for index, local in zip(kept, local_rows, strict=True):
            if local.size < min_cells:
                too_few += 1
                continue
            start = cache.cell_slice(index).start
            images.append(SingleLabelImage(cache_index, ids[index], int(np.flatnonzero(labels[index])[0]),
                                           tuple(int(r) for r in local + start)))
    if too_few:
        logger.info("%d single-label images have fewer than %d usable cells and are left out", too_few, min_cells)
    missing = sorted(allowed - found) if allowed is not None else []
    if missing:
        logger.warning("%d allowed image ids are in none of the caches: %s", len(missing), ", ".join(missing[:5]))
    return images


def _check_draw(images: Sequence[SingleLabelImage], n: int, min_sources: int, max_sources: int) -> list[int]:
    """The distinct classes of `images`; ValueError for settings that cannot give `n` mosaics."""
    if n < 0:
        raise ValueError(f"the number of mosaics must be >= 0, got {n}")
    if not 2 <= min_sources <= max_sources:
        raise ValueError(f"need 2 <= min_sources <= max_sources, got min_sources={min_sources}, "
                         f"max_sources={max_sources}")
    classes = sorted({im.class_id for im in images})
    if n and len(classes) < min_sources:
        names = ", ".join(CLASS_NAMES[c] for c in classes) or "none"
        raise ValueError(f"mosaics of >= {min_sources} sources need single-label images of at least {min_sources} "
                         f"different classes; the {len(images)} single-label images given have {len(classes)} "
                         f"({names})")
    empty = [im.image_id for im in images if not im.cell_rows]
    if empty:
        raise ValueError(f"single-label images without usable cells cannot be mosaic sources: {', '.join(empty[:5])}")
    return classes


def draw_mosaics(images: Sequence[SingleLabelImage], n: int, min_sources: int = 2, max_sources: int = 4,
                 seed: int = 0, max_cells_per_source: int | None = None, id_prefix: str = "mosaic") -> list[Mosaic]:
    """`n` mosaics of the single-label `images` (see `single_label_images`). Mosaic i draws from a generator seeded
    with (seed, i): a number of sources k in [min_sources, min(max_sources, number of classes)], then k images
    with different labels (each image equally likely among those whose class is not taken yet), and from each at
    most `max_cells_per_source` of its cells (all when None). Ids are `{id_prefix}{i:05d}`."""
    classes = _check_draw(images, n, min_sources, max_sources)
    if max_cells_per_source is not None and max_cells_per_source < 1:
        raise ValueError(f"max_cells_per_source must be >= 1 (or None), got {max_cells_per_source}")
    most = min(max_sources, len(classes))
    mosaics = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        k = int(rng.integers(min_sources, most + 1))
        taken: set[int] = set()
        sources = []
        for j in rng.permutation(len(images)):
            image = images[int(j)]
            if image.class_id in taken:
                continue
            taken.add(image.class_id)
            rows = np.asarray(image.cell_rows, dtype=np.int64)
            if max_cells_per_source is not None and rows.size > max_cells_per_source:
                rows = np.sort(rng.choice(rows, size=max_cells_per_source, replace=False))
            sources.append(MosaicSource(image.cache_index, image.image_id, image.class_id,
                                        tuple(int(r) for r in rows)))
            if len(sources) == k:
                break
        mosaics.append(Mosaic(f"{id_prefix}{i:05d}", tuple(sources)))
    return mosaics


def mosaic_cell_truth(mosaics: Sequence[Mosaic]) -> pd.DataFrame:
    """One row per mosaic cell, in mosaic then cell order (the order of `MosaicDataset` bags and of
    `mil.mosaic_evaluation` predictions): mosaic_id, cell_index (position in the mosaic), cache_index,
    source_image_id, cell_row (row in that cache's per-cell tables), class_id, class_name (the cell's truth)."""
    columns: dict[str, list] = {name: [] for name in ("mosaic_id", "cell_index", "cache_index", "source_image_id",
                                                      "cell_row", "class_id", "class_name")}
    for mosaic in mosaics:
        position = 0
        for source in mosaic.sources:
            for row in source.cell_rows:
                for name, value in (("mosaic_id", mosaic.mosaic_id), ("cell_index", position),
                                    ("cache_index", source.cache_index), ("source_image_id", source.image_id),
                                    ("cell_row", row), ("class_id", source.class_id),
                                    ("class_name", CLASS_NAMES[source.class_id])):
                    columns[name].append(value)
                position += 1
    return pd.DataFrame(columns).astype({"cell_index": np.int64, "cache_index": np.int64, "cell_row": np.int64,
                                         "class_id": np.int64})


def source_cells(caches: Sequence[CellCache], source: MosaicSource,
                 rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(crops `N,4,S,S` uint8, masks `N,S,S` uint8) of a source's cells (`rows`: a sorted subset of them)."""
    cache = caches[source.cache_index]
    rows = np.asarray(source.cell_rows if rows is None else rows, dtype=np.int64)
    start = cache.cell_slice(source.image_id).start
    return cache.cells_of(source.image_id, rows - start)


def _split_evenly(sizes: Sequence[int], total: int) -> list[int]:
    """How many cells to take from sources of `sizes` cells for about `total` in all: an even share each (at least
    one per source), a source's unused share passed on to the larger ones."""
    order = np.argsort(sizes, kind="stable")
    take = [0] * len(sizes)
    left = total
    for position, j in enumerate(order):
        share = max(1, left // (len(sizes) - position))
        take[j] = min(int(sizes[j]), share)
        left -= take[j]
    return take


class MosaicDataset(Dataset):
    """Mosaic bags as `mil.bags.BagItem`s (collate with `mil.bags.collate_bags`): `image_index` is the mosaic's
    position in `mosaics`, `cell_rows` the cells' rows in their sources' caches, `labels` the union of the sources'
    labels. Evaluation bags hold every cell in source order (as `mosaic_cell_truth`); training bags (`train`) hold
    at most `max_cells` cells (an even share of each source, so every label of the bag stays present) and are
    augmented as `BagDataset`'s. `set_epoch` makes the draws depend on the epoch."""

    def __init__(self, caches: Sequence[CacheLike], mosaics: Sequence[Mosaic], max_cells: int | None = None,
                 train: bool = False, seed: int = 0, intensity_jitter: float = 0.2,
                 num_classes: int = NUM_CLASSES) -> None:
        self.caches = open_caches(caches)
        self.mosaics = list(mosaics)
        for mosaic in self.mosaics:
            bad = [s.cache_index for s in mosaic.sources if not 0 <= s.cache_index < len(self.caches)]
            if bad:
                raise ValueError(f"{mosaic.mosaic_id}: cache index {bad[0]} but {len(self.caches)} caches given")
        self.max_cells = max_cells
        self.train = train
        self.seed = seed
        self.epoch = 0
        self.intensity_jitter = intensity_jitter
        self.num_classes = num_classes

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.mosaics)

    def __getitem__(self, item: int) -> BagItem:
        mosaic = self.mosaics[item]
        rng = np.random.default_rng([self.seed, self.epoch, item])
        chosen = [np.asarray(s.cell_rows, dtype=np.int64) for s in mosaic.sources]
        if self.train and self.max_cells is not None and mosaic.n_cells > self.max_cells:
            take = _split_evenly([r.size for r in chosen], self.max_cells)
            chosen = [np.sort(rng.choice(r, size=t, replace=False)) for r, t in zip(chosen, take, strict=True)]
        parts = [source_cells(self.caches, s, r) for s, r in zip(mosaic.sources, chosen, strict=True)]
        x = np.concatenate([p[0] for p in parts]).astype(np.float32) / 255.0
        m = np.concatenate([p[1] for p in parts]).astype(np.float32)
        if self.train:
            x, m = augment_cells(x, m, rng, self.intensity_jitter)
        return BagItem(item, torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(m)),
                       torch.from_numpy(mosaic.labels(self.num_classes)), torch.from_numpy(np.concatenate(chosen)))


class BagsWithMosaics(BagDataset):
    """A training `BagDataset` over one cache's `image_indices` followed by `mosaic_bags` mosaic bags, drawn afresh
    by every `set_epoch` from the single-label images among those same images only (so validation images never
    enter). `image_indices`, `labels` and the channel statistics stay those of the images; `len` counts both.
    `cell_labels` (self-training's pseudo-labels) reach the images' bags; mosaic bags carry none (the collate
    marks their cells unknown)."""

    def __init__(self, cache_path: str | os.PathLike[str], image_indices: Sequence[int] | None, mosaic_bags: int,
                 max_cells: int | None = None, seed: int = 0, exclude_flags: Sequence[str] = DEFAULT_EXCLUDE_FLAGS,
                 intensity_jitter: float = 0.2, cell_labels: np.ndarray | None = None) -> None:
        super().__init__(cache_path, image_indices, max_cells, train=True, seed=seed, exclude_flags=exclude_flags,
                         intensity_jitter=intensity_jitter, cell_labels=cell_labels)
        if mosaic_bags < 1:
            raise ValueError(f"mosaic_bags must be >= 1, got {mosaic_bags}")
        ids = self.cache.image_ids
        self.sources = single_label_images([self.cache], [ids[i] for i in self.image_indices], exclude_flags)
        try:
            _check_draw(self.sources, mosaic_bags, 2, 4)
        except ValueError as err:
            raise MosaicDrawError(f"{self.cache.path}: mosaic bags from the training images: {err}") from None
        self.mosaic_bags = mosaic_bags
        self._mosaics = MosaicDataset([self.cache], [], max_cells, train=True, seed=seed,
                                      intensity_jitter=intensity_jitter)
        logger.info("%d mosaic bags per epoch from %d single-label training images of %d classes", mosaic_bags,
                    len(self.sources), len({s.class_id for s in self.sources}))
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Redraw the epoch's mosaics (seeded by the run's seed and the epoch)."""
        super().set_epoch(epoch)
        epoch_seed = int(np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0])
        self._mosaics.mosaics = draw_mosaics(self.sources, self.mosaic_bags, seed=epoch_seed,
                                             id_prefix=f"epoch{epoch}-mosaic")
        self._mosaics.set_epoch(epoch)

    @property
    def mosaics(self) -> list[Mosaic]:
        """This epoch's mosaics."""
        return self._mosaics.mosaics

    def __len__(self) -> int:
        return len(self.image_indices) + self.mosaic_bags

    def __getitem__(self, item: int) -> BagItem:
        n_images = len(self.image_indices)
        return super().__getitem__(item) if item < n_images else self._mosaics[item - n_images]


@dataclass(frozen=True)
class MosaicScore:
    """Cell-level mAP over mosaic cells: macro over the classes with >= 1 positive cell (`n_classes`);
    `per_class_ap` `K` with NaN for classes without positive cells."""

    mean_ap: float
    per_class_ap: np.ndarray
    n_mosaics: int
    n_cells: int
    n_classes: int

    def summary(self) -> str:
        return (f"cell mAP {self.mean_ap:.3f} over {self.n_classes} classes ({self.n_cells} cells in "
                f"{self.n_mosaics} mosaics)")


def score_mosaic_cells(cell_probs: np.ndarray, truth: pd.DataFrame) -> MosaicScore:
    """Cell-level mAP of `N,K` class scores aligned with the rows of `truth` (`mosaic_cell_truth`): for each class,
    the average precision of ranking every mosaic cell by its score with the cells of that class as positives
    (`hpa_cells.metrics`, ties as scikit-learn), averaged over the classes with at least one positive cell."""
    scores = np.asarray(cell_probs, dtype=np.float64)
    n = len(truth)
    if scores.ndim != 2 or scores.shape[0] != n:
        raise ValueError(f"cell scores {scores.shape} do not fit the truth table's {n} cells (N,K expected)")
    class_ids = truth["class_id"].to_numpy(dtype=np.int64)
    if n and (class_ids.min() < 0 or class_ids.max() >= scores.shape[1]):
        raise ValueError(f"truth class ids {class_ids.min()}..{class_ids.max()} outside 0..{scores.shape[1] - 1}")
    hits = np.zeros(scores.shape, dtype=bool)
    hits[np.arange(n), class_ids] = True
    positives = hits.sum(axis=0)
    result = cell_map_of(MatchedCells(scores, hits, positives, n, n, n))
    return MosaicScore(result.mean_ap, result.per_class_ap, int(truth["mosaic_id"].nunique()), n,
                       int((positives > 0).sum()))


def iter_source_rows(mosaics: Sequence[Mosaic]) -> Iterator[tuple[int, str, np.ndarray]]:
    """(cache index, image id, the sorted union of its cells in `mosaics`) for each source image used, once."""
    rows: dict[tuple[int, str], set[int]] = {}
    for mosaic in mosaics:
        for source in mosaic.sources:
            rows.setdefault((source.cache_index, source.image_id), set()).update(source.cell_rows)
    for (cache_index, image_id), cells in sorted(rows.items()):
        yield cache_index, image_id, np.asarray(sorted(cells), dtype=np.int64)
