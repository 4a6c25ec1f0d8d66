"""Scoring a prediction folder against image labels and, for synthetic data, per-cell truth — the one scorer.

`score_prediction_folder` gives the numbers `scripts/evaluate.py` prints and the report shows: image-level macro
F1 and per-class F1 (`hpa_cells.metrics`) on the predicted images that have labels, and with a truth folder the
cell-level mAP of the folder's cells (the project's segmentation, matched to the true cells at IoU >= 0.6, misses
and extra cells counted) over the labelled images that have per-cell truth, with each class's PR curve.

Nothing here needs a model: the second cell mAP of `evaluate.py`, on the true masks, re-runs the model and lives
in `mil.evaluation`, which fills `FolderScores.cell_map_true_masks`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from hpa_cells.classes import CLASS_NAMES, NUM_CLASSES
from hpa_cells.labels import read_labels, to_multi_hot
from hpa_cells.metrics import (
    CELL_MATCH_IOU,
    ClassCurve,
    cell_map_of,
    class_curve,
    macro_f1,
    match_cells_to_truth,
    per_class_f1,
    read_cell_truth,
    read_true_cell_mask,
)
from hpa_cells.predictions import PredictionFolder, PredictionFolderError, read_prediction_folder

if TYPE_CHECKING:
    from hpa_cells.cache import CellCache

logger = logging.getLogger(__name__)

SHOWN_IDS = 5
"""How many ids of the labelled images without a prediction are named."""

_EXTRA = {"json": False}
"""Field metadata of `FolderScores` entries left out of `to_dict` (arrays and curves for figures)."""


def named_scores(values: np.ndarray) -> dict[str, float | None]:
    """class name -> value of `K` per-class values (None where NaN)."""
    return {CLASS_NAMES[k]: (None if np.isnan(v) else float(v)) for k, v in enumerate(values)}


@dataclass
class FolderScores:
    """The scores of one prediction folder. `to_dict` (evaluate.py's JSON) holds the fields up to `cell_score`;
    `class_support`, `cell_curves` and `cell_image_ids` are for figures and tables."""

    n_images: int
    """Predicted images with labels (0 when no labels were given or none matched)."""
    image_macro_f1: float
    per_class_f1: dict[str, float | None]
    images_without_labels: int = 0
    labelled_without_prediction: int = 0
    """Labelled images that are not in images.csv (not scored): skipped while segmenting, without cells, or not
    in the predicted cache at all."""
    labelled_without_prediction_ids: list[str] = field(default_factory=list)
    """The first `SHOWN_IDS` of them, in the label file's order."""
    labelled_unpredicted: int = 0
    """How many of them the prediction folder lists as without a prediction (manifest `unpredicted`)."""
    cell_map: float | None = None
    cell_map_true_masks: float | None = None
    per_class_cell_ap: dict[str, float | None] = field(default_factory=dict)
    per_class_cell_ap_true_masks: dict[str, float | None] = field(default_factory=dict)
    cells_true: int | None = None
    cells_matched: int | None = None
    cells_predicted: int | None = None
    cell_score: str | None = None
    """The prediction folder's cell score (`hpa_cells.predictions.CELL_SCORES`) that the cell mAPs rank by."""
    class_support: np.ndarray = field(default_factory=lambda: np.zeros(NUM_CLASSES, np.int64), metadata=_EXTRA)
    """`K`: labelled images carrying each class."""
    cell_curves: dict[int, ClassCurve] = field(default_factory=dict, metadata=_EXTRA)
    """class id -> cell-level PR curve, for the classes some true cell carries."""
    cell_image_ids: list[str] = field(default_factory=list, metadata=_EXTRA)
    """The images the cell mAP was scored on."""

    @property
    def per_class_f1_array(self) -> np.ndarray:
        """`K` image-level F1 scores, NaN where a class is absent from truth and predictions."""
        return np.array([np.nan if v is None else v for v in (self.per_class_f1.get(n) for n in CLASS_NAMES)])

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.metadata.get("json", True)}

    def lines(self) -> list[str]:
        out = [f"images scored: {self.n_images} (predicted images without labels: {self.images_without_labels})",
               f"image-level macro F1: {self.image_macro_f1:.4f}"]
        if self.labelled_without_prediction:
            out.insert(1, self.without_prediction_line())
        if self.cell_map is not None:
            out.append(f"cell scores: {self.cell_score}")
            out.append(f"cell-level mAP, project segmentation: {self.cell_map:.4f} "
                       f"({self.cells_matched}/{self.cells_true} true cells matched at IoU>={CELL_MATCH_IOU}, "
                       f"{self.cells_predicted} predicted)")
        if self.cell_map_true_masks is not None:
            out.append(f"cell-level mAP, true masks: {self.cell_map_true_masks:.4f}")
        cells = self.cell_map is not None
        out.append(f"{'class':34s} {'image F1':>9s}" + (f" {'cell AP':>8s} {'AP(true)':>8s}" if cells else ""))
        for name in CLASS_NAMES:
            row = f"{name:34s} {_cell_text(self.per_class_f1.get(name), 3):>9s}"
            if cells:
                row += (f" {_cell_text(self.per_class_cell_ap.get(name), 3):>8s}"
                        f" {_cell_text(self.per_class_cell_ap_true_masks.get(name), 3):>8s}")
            out.append(row)
        return out


    def without_prediction_line(self) -> str:
        """The line naming the labelled images that have no prediction (not scored)."""
        shown = ", ".join(self.labelled_without_prediction_ids)
        more = ", ..." if self.labelled_without_prediction > len(self.labelled_without_prediction_ids) else ""
        return (f"labelled images without a prediction (not scored): {self.labelled_without_prediction} ({shown}{more}; "
                f"{self.labelled_unpredicted} of them skipped while segmenting or without cells)")


def _cell_text(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def score_images(images: pd.DataFrame, labels: Mapping[str, Sequence[int]]) -> FolderScores:
    """Image-level scores of an images table (`image_id`, `predicted_ids`) on the images that have `labels`."""
    scored = images[images["image_id"].isin(list(labels))]
    if scored.empty:
        return FolderScores(0, float("nan"), named_scores(np.full(NUM_CLASSES, np.nan)), len(images))
    y_true = to_multi_hot([labels[i] for i in scored["image_id"]])
    y_pred = to_multi_hot(scored["predicted_ids"])
    return FolderScores(len(scored), macro_f1(y_true, y_pred), named_scores(per_class_f1(y_true, y_pred)),
                        len(images) - len(scored), class_support=y_true.sum(axis=0))


def read_cell_masks(cache: CellCache, truth_dir: Path, image_ids: Sequence[str]
                    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(true, predicted) cell masks of `image_ids`: the predicted ones from an open `CellCache`, the true ones from
    the synthetic folder `truth_dir`, resized to the predicted masks' shape."""
    true_masks, pred_masks = {}, {}
    for image_id in image_ids:
        pred_masks[image_id], _ = cache.full_masks(image_id)
        true_masks[image_id] = read_true_cell_mask(truth_dir, image_id, pred_masks[image_id].shape)
    return true_masks, pred_masks


@dataclass(frozen=True)
class CellScores:
    """Cell-level scores of a folder's cells on `image_ids`."""

    mean_ap: float
    per_class_ap: np.ndarray
    curves: dict[int, ClassCurve]
    n_true_cells: int
    n_matched_cells: int
    n_pred_cells: int
    image_ids: list[str]


def _open_cache(folder: PredictionFolder) -> CellCache:
    from hpa_cells.cache import CellCache

    if folder.cache_path is None:
        raise PredictionFolderError(f"{folder.manifest_path}: no 'cache' entry (the cell cache predicted)")
    return CellCache(folder.cache_path)


def score_cells(folder: PredictionFolder, truth_dir: Path, truth: Mapping[str, Mapping[int, Sequence[int]]],
                image_ids: Sequence[str] | None = None, cache: CellCache | None = None) -> CellScores:
    """Cell mAP and PR curves of the folder's cells against `truth` (`read_cell_truth(truth_dir)`) on the folder's
    images that have truth (and are in `image_ids`, when given); predicted masks come from `cache` (an open
    CellCache), else from the cache recorded in the manifest."""
    wanted = None if image_ids is None else set(image_ids)
    ids = [i for i in folder.image_ids if i in truth and (wanted is None or i in wanted)]
    if cache is None:
        with _open_cache(folder) as opened:
            true_masks, pred_masks = read_cell_masks(opened, truth_dir, ids)
    else:
        true_masks, pred_masks = read_cell_masks(cache, truth_dir, ids)
    matched = match_cells_to_truth(true_masks, truth, pred_masks, folder.cell_probabilities(ids), NUM_CLASSES)
    result = cell_map_of(matched)
    curves = {int(c): class_curve(matched.scores[:, c], matched.hits[:, c], int(matched.positives[c]))
              for c in np.flatnonzero(matched.positives)}
    return CellScores(result.mean_ap, result.per_class_ap, curves, result.n_true_cells, result.n_matched_cells,
                      result.n_pred_cells, ids)


def _count_without_prediction(scores: FolderScores, labels: Mapping[str, Sequence[int]], predicted: set[str],
                              folder: PredictionFolder) -> None:
    """Fill the `labelled_without_prediction*` fields: the labelled images missing from images.csv."""
    missing = [i for i in labels if i not in predicted]
    unpredicted = folder.unpredicted if folder.has_manifest else {}
    scores.labelled_without_prediction = len(missing)
    scores.labelled_without_prediction_ids = missing[:SHOWN_IDS]
    scores.labelled_unpredicted = sum(1 for i in missing if i in unpredicted)
    if missing:
        logger.info(scores.without_prediction_line())


def score_prediction_folder(folder: str | os.PathLike[str] | PredictionFolder,
                            labels: str | os.PathLike[str] | Mapping[str, Sequence[int]] | None,
                            truth_dir: str | os.PathLike[str] | None = None,
                            cache: CellCache | None = None) -> FolderScores:
    """The scores of a prediction folder: what evaluate.py prints and the report shows.

    labels: a label file (2018 or 2021 format), or image id -> class ids, or None (no image-level scores:
    `n_images` 0). truth_dir: a synthetic folder with per-cell truth; then the cell mAP and PR curves over the
    labelled images that have truth (every image with truth when `labels` is None). cache: an open CellCache to
    read the predicted masks from (default: the cache recorded in the manifest).
    """
    folder = read_prediction_folder(folder)
    label_map = None if labels is None else (
        dict(labels) if isinstance(labels, Mapping) else read_labels(Path(labels)))
    images = folder.images
    scores = score_images(images, label_map) if label_map is not None else \
        FolderScores(0, float("nan"), named_scores(np.full(NUM_CLASSES, np.nan)), len(images))
    if label_map is not None:
        _count_without_prediction(scores, label_map, set(images["image_id"]), folder)
    if truth_dir is None:
        return scores
    truth_dir = Path(truth_dir)
    truth = read_cell_truth(truth_dir)
    scores.cell_score = folder.cell_score
    cells = score_cells(folder, truth_dir, truth, None if label_map is None else list(label_map), cache)
    scores.cell_map = cells.mean_ap
    scores.per_class_cell_ap = named_scores(cells.per_class_ap)
    scores.cells_true, scores.cells_matched, scores.cells_predicted = (
        cells.n_true_cells, cells.n_matched_cells, cells.n_pred_cells)
    scores.cell_curves = cells.curves
    scores.cell_image_ids = list(cells.image_ids)
    return scores
