"""The leak baseline of the mosaic benchmark: how much do source-field cues alone tell a cell's class?

Mosaic cells come from different fields, and fields differ in staining, exposure and cell line, so a model could
rank a mosaic's cells by such cues without seeing any localization pattern. This baseline sees only those cues:
per-cell channel intensity statistics (per channel: mean, standard deviation and the 10th, 50th and 90th
percentiles of the crop inside the cell mask; plus the cell's area at working size), standardised, into a
one-vs-rest logistic regression with balanced class weights, trained on the cells of training mosaics with their
source labels and scored by the same cell mAP (`mil.mosaics.score_mosaic_cells`) on held-out mosaics.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hpa_cells.cache import CellCache
from hpa_cells.channels import CHANNELS
from hpa_cells.classes import NUM_CLASSES
from mil.mosaics import (
    CacheLike,
    Mosaic,
    MosaicScore,
    iter_source_rows,
    mosaic_cell_truth,
    open_caches,
    score_mosaic_cells,
)

STATISTICS = ("mean", "std", "p10", "p50", "p90")
FEATURE_NAMES: tuple[str, ...] = (*(f"{channel}_{stat}" for channel in CHANNELS for stat in STATISTICS), "area")
"""The columns of `cell_intensity_features`."""


def crop_statistics(crops: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """`N,4*5` intensity statistics (in [0, 1], channel-major as `FEATURE_NAMES`) of crops `N,4,S,S` uint8 inside
    their masks `N,S,S` (the whole crop when a mask is empty)."""
    out = np.zeros((crops.shape[0], crops.shape[1] * len(STATISTICS)), dtype=np.float64)
    for i in range(crops.shape[0]):
        inside = masks[i] > 0
        if not inside.any():
            inside = np.ones_like(inside)
        values = crops[i][:, inside].astype(np.float64) / 255.0  # C,P
        stats = np.stack([values.mean(1), values.std(1), *np.percentile(values, [10, 50, 90], axis=1)], axis=1)
        out[i] = stats.reshape(-1)
    return out


def cell_intensity_features(caches: Sequence[CacheLike], mosaics: Sequence[Mosaic]) -> np.ndarray:
    """`N,21` features (`FEATURE_NAMES`) of the mosaics' cells, aligned with `mosaic_cell_truth(mosaics)`; each
    source image's cells are read once however many mosaics use them."""
    opened: list[CellCache] = open_caches(caches)
    areas = [cache.cell_table()["area"].to_numpy(dtype=np.float64) for cache in opened]
    features: dict[tuple[int, int], np.ndarray] = {}
    for cache_index, image_id, rows in iter_source_rows(mosaics):
        cache = opened[cache_index]
        crops, masks = cache.cells_of(image_id, rows - cache.cell_slice(image_id).start)
        stats = np.column_stack([crop_statistics(crops, masks), areas[cache_index][rows]])
        features.update({(cache_index, int(r)): stats[j] for j, r in enumerate(rows)})
    truth = mosaic_cell_truth(mosaics)
    if truth.empty:
        return np.zeros((0, len(FEATURE_NAMES)))
    return np.stack([features[(int(c), int(r))] for c, r in zip(truth["cache_index"], truth["cell_row"],
                                                                 strict=True)])


@dataclass(frozen=True)
class LeakBaseline:
    """The fitted classifier (a scikit-learn pipeline) and the class ids of its outputs."""

    pipeline: object
    class_ids: tuple[int, ...]

    def cell_scores(self, features: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
        """`N,K` per-class probabilities (each one-vs-rest model's sigmoid; 0 for classes never seen)."""
        out = np.zeros((features.shape[0], num_classes))
        margins = np.asarray(self.pipeline.decision_function(features)).reshape(features.shape[0], -1)
        out[:, list(self.class_ids)] = 1.0 / (1.0 + np.exp(-margins))
        return out


def fit_leak_baseline(caches: Sequence[CacheLike], mosaics: Sequence[Mosaic], seed: int = 0) -> LeakBaseline:
    """Fit the baseline on the cells of `mosaics` (training mosaics), each labelled by its source image."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    truth = mosaic_cell_truth(mosaics)
    class_ids = tuple(sorted(int(c) for c in truth["class_id"].unique()))
    if len(class_ids) < 2:
        raise ValueError(f"the leak baseline needs cells of at least 2 classes to train on, got {len(class_ids)}")
    targets = (truth["class_id"].to_numpy()[:, None] == np.asarray(class_ids)[None, :]).astype(int)
    pipeline = make_pipeline(StandardScaler(), OneVsRestClassifier(
        LogisticRegression(class_weight="balanced", max_iter=2000, random_state=seed)))
    pipeline.fit(cell_intensity_features(caches, mosaics), targets)  # an indicator matrix: one model per class
    return LeakBaseline(pipeline, class_ids)


def leak_baseline(caches: Sequence[CacheLike], train_mosaics: Sequence[Mosaic], test_mosaics: Sequence[Mosaic],
                  seed: int = 0) -> MosaicScore:
    """Cell mAP of the intensity-statistics classifier fitted on `train_mosaics`' cells, on `test_mosaics`' cells
    (both index into `caches`; draw them from disjoint images)."""
    opened = open_caches(caches)
    baseline = fit_leak_baseline(opened, train_mosaics, seed)
    scores = baseline.cell_scores(cell_intensity_features(opened, test_mosaics))
    return score_mosaic_cells(scores, mosaic_cell_truth(test_mosaics))
