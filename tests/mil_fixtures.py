"""Small hand-made cell caches for the MIL tests: bags of crops with known per-cell truth.

`write_bag_cache` writes bags (one image = one bag) straight through `CellCacheWriter`, so tests control
every crop, QC flag and label. `green_marker_bags` makes a task with a known answer: a class is present in
an image iff at least one of its cells shows a bright green (protein channel) square.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hpa_cells.cache import CacheProvenance, CellCacheWriter
from hpa_cells.classes import NUM_CLASSES
from hpa_cells.crops import CELL_RECORD_COLUMNS

PROVENANCE = CacheProvenance(segmenter="hand", model_sha256="", parameters={"test": True})
QC_FLAG_NAMES = {"border": 1, "no_nucleus": 2, "small": 4}


@dataclass(frozen=True)
class HandBag:
    """One image's cells. crops `N,4,S,S` uint8; masks `N,S,S` uint8 0/1; qc_flags `N`;
    labels `28` 0/1 (None = unlabelled); cell_classes `N,28` bool: the truth of each cell."""

    image_id: str
    crops: np.ndarray
    masks: np.ndarray
    qc_flags: np.ndarray
    labels: np.ndarray | None
    cell_classes: np.ndarray


def _cell_records(n: int, qc_flags: np.ndarray) -> pd.DataFrame:
    """A per-cell table for `n` cells with ids 1..n laid out along one row of 8x8 boxes."""
    ids = np.arange(1, n + 1)
    table = pd.DataFrame(
        {
            "cell_id": ids,
            "bbox_y0": 0,
            "bbox_x0": (ids - 1) * 8,
            "bbox_y1": 8,
            "bbox_x1": ids * 8,
            "centroid_y": 3.5,
            "centroid_x": (ids - 1) * 8 + 3.5,
            "area": 64,
            "nucleus_area": 16,
            "scale": 1.0,
            "qc_flags": np.asarray(qc_flags, dtype=np.int64),
        }
    )
    return table[list(CELL_RECORD_COLUMNS)]


def write_bag_cache(path: Path, bags: Sequence[HandBag]) -> Path:
    """Write `bags` as a cell cache at `path` (crop size taken from the first bag)."""
    crop_size = int(bags[0].crops.shape[-1])
    with CellCacheWriter(path, crop_size, PROVENANCE, QC_FLAG_NAMES) as writer:
        for bag in bags:
            n = bag.crops.shape[0]
            cells_hw = np.repeat(np.repeat(np.arange(1, n + 1, dtype=np.int32)[None, :], 8, axis=1), 8, axis=0)
            writer.add_image(bag.image_id, bag.crops, bag.masks, _cell_records(n, bag.qc_flags),
                             cells_hw, (cells_hw > 0).astype(np.int32), cells_hw.shape, bag.labels,
                             image_chw=np.zeros((4, *cells_hw.shape), np.uint8))
    return path


def random_bags(n_images: int, seed: int, crop_size: int = 16, min_cells: int = 2, max_cells: int = 6,
                qc_flags: Sequence[Sequence[int]] | None = None) -> list[HandBag]:
    """Bags of random crops with random labels (every class id < 4, each image with >= 1 label).

    Each crop's red channel at pixel (0, 0) holds its cell number within the image (1..N), so tests can tell
    which cells a bag returned; masks are random 0/1 (no symmetry); every cell's cell_classes are the image's
    labels. qc_flags: optional per-image per-cell flags.
    """
    rng = np.random.default_rng(seed)
    bags = []
    for index in range(n_images):
        n = int(rng.integers(min_cells, max_cells + 1)) if qc_flags is None else len(qc_flags[index])
        crops = rng.integers(0, 200, (n, 4, crop_size, crop_size), dtype=np.uint8)
        crops[:, 0, 0, 0] = np.arange(1, n + 1)
        masks = (rng.random((n, crop_size, crop_size)) < 0.5).astype(np.uint8)  # asymmetric: shows rotations
        labels = np.zeros(NUM_CLASSES, dtype=np.uint8)
        labels[rng.choice(4, size=int(rng.integers(1, 3)), replace=False)] = 1
        flags = np.zeros(n, dtype=np.int64) if qc_flags is None else np.asarray(qc_flags[index], dtype=np.int64)
        bags.append(HandBag(f"img{index:03d}", crops, masks, flags, labels,
                            np.repeat(labels[None, :].astype(bool), n, axis=0)))
    return bags


def green_marker_bags(n_images: int, seed: int, crop_size: int = 32, classes: tuple[int, int] = (0, 1),
                      min_cells: int = 3, max_cells: int = 6, positive_rate: float = 0.5) -> list[HandBag]:
    """Bags where class `classes[j]` is present in an image iff some cell carries marker j.

    Every cell is a disc (mask) with a nucleus (blue), microtubules (red) and ER (yellow) plus noise and a dim
    diffuse protein signal; marker 0 is a bright green 5x5 square in a random quadrant of the cytoplasm,
    marker 1 a bright green nucleus (the markers differ under the flips and rotations of training
    augmentation). In an image holding class j, 1 or 2 random cells carry marker j.
    """
    rng = np.random.default_rng(seed)
    s = crop_size
    yy, xx = np.mgrid[:s, :s]
    centre = (s - 1) / 2
    disc = ((yy - centre) ** 2 + (xx - centre) ** 2) <= (0.45 * s) ** 2
    nucleus = ((yy - centre) ** 2 + (xx - centre) ** 2) <= (0.18 * s) ** 2
    q = s // 4
    quadrant_corners = [(q - 2, q - 2), (q - 2, 3 * q - 3), (3 * q - 3, q - 2), (3 * q - 3, 3 * q - 3)]
    bags = []
    for index in range(n_images):
        n = int(rng.integers(min_cells, max_cells + 1))
        crops = np.zeros((n, 4, s, s), dtype=np.float64)
        crops += rng.uniform(0, 30, (n, 4, s, s))
        crops[:, 0] += 60 * disc
        crops[:, 2] += 150 * nucleus
        crops[:, 3] += 50 * disc
        crops[:, 1] += 25 * disc  # dim diffuse protein everywhere
        labels = np.zeros(NUM_CLASSES, dtype=np.uint8)
        cell_classes = np.zeros((n, NUM_CLASSES), dtype=bool)
        for marker, class_id in enumerate(classes):
            if rng.random() >= positive_rate:
                continue
            carriers = rng.choice(n, size=min(n, int(rng.integers(1, 3))), replace=False)
            for cell in carriers:
                if marker == 0:
                    y, x = quadrant_corners[int(rng.integers(4))]
                    crops[cell, 1, y : y + 5, x : x + 5] += 200
                else:
                    crops[cell, 1] += 170 * nucleus
            labels[class_id] = 1
            cell_classes[carriers, class_id] = True
        crops *= disc  # nothing outside the cell
        bags.append(HandBag(f"sq{index:03d}", np.clip(crops, 0, 255).astype(np.uint8),
                            np.repeat(disc[None].astype(np.uint8), n, axis=0), np.zeros(n, dtype=np.int64),
                            labels, cell_classes))
    return bags


def write_cell_labels(bags, path: Path) -> Path:
    """A per-cell label CSV (image_id, cell_id, labels) from the hand bags' cell truth (cell ids 1..N)."""
    lines = ["image_id,cell_id,labels"]
    for bag in bags:
        for k, classes in enumerate(bag.cell_classes, start=1):
            lines.append(f"{bag.image_id},{k},{' '.join(str(c) for c in np.flatnonzero(classes))}")
    path.write_text("\n".join(lines) + "\n")
    return path
