"""A tiny prediction run with known values, for the map, report and export tests.

Two fields with hand-drawn rectangular cells: `fieldA` (working size 48x64, original 192x256, cells 1, 2 and 5,
cell 5 QC-flagged "border" and left out of pooling) and `fieldB` (48x64, original 48x64, cells 1 and 2). The
input images, the cell cache (written by `CellCacheWriter`) and the prediction folder (written by the real
`write_prediction_folder`) all agree, so every drawn or exported value can be checked against `CELL_PROBS`.
A per-cell truth folder (synthetic layout: cells.csv + `{id}_cells.png`) uses the same masks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hpa_cells.cache import CacheProvenance, CellCache, CellCacheWriter
from hpa_cells.classes import CLASS_NAMES, NUM_CLASSES
from hpa_cells.crops import CELL_RECORD_COLUMNS
from hpa_cells.images import resize_image, write_label_mask, write_sample
from hpa_cells.labels import to_multi_hot, write_labels_2018

WORKING_HW = (48, 64)
ORIGINAL_HW = {"fieldA": (192, 256), "fieldB": (48, 64)}
QC_FLAG_NAMES = {"border": 1, "no_nucleus": 2, "small": 4}
CELL_BOXES = {  # image -> cell id -> (y0, y1, x0, x1) at working size
    "fieldA": {1: (4, 20, 4, 24), 2: (4, 20, 30, 50), 5: (26, 44, 10, 40)},
    "fieldB": {1: (10, 30, 10, 30), 2: (10, 30, 34, 60)},
}
FLAGGED = {("fieldA", 5): 1}
THRESHOLDS = np.full(NUM_CLASSES, 0.5)
THRESHOLDS[25] = 0.3
IMAGE_PREDICTED = {"fieldA": (0, 25), "fieldB": ()}
IMAGE_LABELS = {"fieldA": (0, 2), "fieldB": (25,)}
CELL_TRUTH = {("fieldA", 1): (0,), ("fieldA", 2): (0, 2), ("fieldA", 5): (), ("fieldB", 1): (25,), ("fieldB", 2): ()}


def cell_probabilities(image_id: str, cell_id: int) -> np.ndarray:
    """`28` distinct, known probabilities of one cell."""
    k = (0 if image_id == "fieldA" else 10) + cell_id
    return np.round((k * 0.13 + np.arange(NUM_CLASSES) * 0.037) % 0.97 + 0.01, 5)


def image_probabilities(image_id: str) -> np.ndarray:
    """`28` image probabilities consistent with IMAGE_PREDICTED and THRESHOLDS."""
    probs = np.full(NUM_CLASSES, 0.1)
    probs[1] = 0.45
    for c in IMAGE_PREDICTED[image_id]:
        probs[c] = 0.8
    return probs


def masks_of(image_id: str) -> tuple[np.ndarray, np.ndarray]:
    """(cells `H,W`, nuclei `H,W`) uint16 at working size: rectangles, each nucleus the cell's inner third."""
    cells = np.zeros(WORKING_HW, np.uint16)
    nuclei = np.zeros(WORKING_HW, np.uint16)
    for cell_id, (y0, y1, x0, x1) in CELL_BOXES[image_id].items():
        cells[y0:y1, x0:x1] = cell_id
        dy, dx = (y1 - y0) // 3, (x1 - x0) // 3
        nuclei[y0 + dy:y1 - dy, x0 + dx:x1 - dx] = cell_id
    return cells, nuclei


def _records(image_id: str, cells: np.ndarray, nuclei: np.ndarray) -> pd.DataFrame:
    rows = []
    for cell_id, (y0, y1, x0, x1) in CELL_BOXES[image_id].items():
        rows.append({"cell_id": cell_id, "bbox_y0": y0, "bbox_x0": x0, "bbox_y1": y1, "bbox_x1": x1,
                     "centroid_y": (y0 + y1 - 1) / 2, "centroid_x": (x0 + x1 - 1) / 2,
                     "area": int((cells == cell_id).sum()), "nucleus_area": int((nuclei == cell_id).sum()),
                     "scale": 1.0, "qc_flags": FLAGGED.get((image_id, cell_id), 0)})
    return pd.DataFrame(rows)[list(CELL_RECORD_COLUMNS)]


@dataclass(frozen=True)
class PredictionFixture:
    images: Path
    cache: Path
    pred: Path
    truth: Path
    labels: Path


def write_prediction_fixture(root: Path, seed: int = 0) -> PredictionFixture:
    """Write images, cache, prediction folder, truth folder and a 2018 labels CSV under `root`."""
    from hpa_cells.predictions import Predictions, write_prediction_folder

    rng = np.random.default_rng(seed)
    images, truth = root / "images", root / "truth"
    truth.mkdir(parents=True)
    cache_path = root / "cells.h5"
    provenance = CacheProvenance("hand", "", {"images_dir": str(images), "working_size": max(WORKING_HW)})
    with CellCacheWriter(cache_path, 8, provenance, QC_FLAG_NAMES) as writer:
        for image_id in CELL_BOXES:
            cells, nuclei = masks_of(image_id)
            height, width = ORIGINAL_HW[image_id]
            field = rng.integers(0, 256, (4, height, width), dtype=np.uint8)
            write_sample(images, image_id, field)
            n = len(CELL_BOXES[image_id])
            writer.add_image(image_id, np.zeros((n, 4, 8, 8), np.uint8), np.ones((n, 8, 8), np.uint8),
                             _records(image_id, cells, nuclei), cells, nuclei, (height, width),
                             to_multi_hot([IMAGE_LABELS[image_id]])[0], image_chw=resize_image(field, cells.shape))
            write_label_mask(truth / f"{image_id}_cells.png", cells)
    pd.DataFrame([{"image_id": i, "cell_id": c, "labels": " ".join(map(str, v))} for (i, c), v in CELL_TRUTH.items()]
                 ).to_csv(truth / "cells.csv", index=False)
    labels = write_labels_2018(root / "labels.csv", IMAGE_LABELS)

    with CellCache(cache_path) as cache:
        table = cache.cell_table()
    probs = np.stack([cell_probabilities(i, c) for i, c in zip(table["image_id"], table["cell_id"], strict=True)])
    used = table["qc_flags"].to_numpy() == 0
    attention = np.zeros(len(table))
    for image_id in CELL_BOXES:
        rows = np.flatnonzero((table["image_id"] == image_id).to_numpy() & used)
        weights = np.arange(1, len(rows) + 1, dtype=np.float64)
        attention[rows] = weights / weights.sum()
    table["used_for_image"] = used
    for c, name in enumerate(CLASS_NAMES):
        table[name] = probs[:, c]
    top = probs.argmax(axis=1)
    table["top_label_id"] = top
    table["top_label"] = [CLASS_NAMES[t] for t in top]
    table["top_probability"] = probs[np.arange(len(top)), top]
    table["attention"] = attention
    ids = list(CELL_BOXES)
    predictions = Predictions(ids, np.stack([image_probabilities(i) for i in ids]), table, attention[:, None], THRESHOLDS)
    pred = root / "pred"
    write_prediction_folder(predictions, pred, {"model": str(root / "no_model"), "cache": str(cache_path)},
                           QC_FLAG_NAMES)
    return PredictionFixture(images, cache_path, pred, truth, labels)
