"""A trained model on mosaic bags (`mil.mosaics`): per-cell probabilities and the cell-level mAP against each
cell's source-image label.

Mosaics go through the same prediction as images (`mil.inference.predict_bags`, the family's `predict_group`
from the registry), as bags of crop-family inputs; every mosaic cell is usable (the mosaics hold only cells that
passed QC). The cells' class scores follow `cell_score` exactly as in prediction folders: `gated` (default) is
`sqrt(p_cell * p_bag)`, `cell` the cell's own probability.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from hpa_cells.cache import CellCache
from hpa_cells.classes import CLASS_NAMES
from hpa_cells.predictions import Predictions
from mil.families import get_family
from mil.inference import predict_bags, require_cell_score
from mil.model_folder import LoadedModel
from mil.mosaics import (
    CacheLike,
    Mosaic,
    MosaicScore,
    mosaic_cell_truth,
    open_caches,
    score_mosaic_cells,
    source_cells,
)
from mil.prediction_batches import BagInput


def mosaic_bag_inputs(caches: Sequence[CellCache], mosaics: Sequence[Mosaic]) -> Iterator[BagInput]:
    """Each mosaic as a `BagInput` named by its mosaic id: every cell's crop and mask (all usable) and its cache
    table row, with `image_id` the mosaic id and the columns cell_index, source_cache_index, source_image_id."""
    tables = [cache.cell_table() for cache in caches]
    for mosaic in mosaics:
        crops, masks, frames = [], [], []
        for source in mosaic.sources:
            c, m = source_cells(caches, source)
            crops.append(c)
            masks.append(m)
            frame = tables[source.cache_index].iloc[list(source.cell_rows)].reset_index(drop=True)
            frame["source_cache_index"] = source.cache_index
            frame["source_image_id"] = source.image_id
            frames.append(frame.drop(columns=["image_index"]))
        cells = pd.concat(frames, ignore_index=True)
        cells["image_id"] = mosaic.mosaic_id
        cells.insert(1, "cell_index", np.arange(len(cells), dtype=np.int64))
        yield BagInput(mosaic.mosaic_id, np.concatenate(crops), np.concatenate(masks), np.ones(len(cells), bool),
                       cells)


def predict_mosaics(loaded: LoadedModel, caches: Sequence[CacheLike], mosaics: Sequence[Mosaic],
                    batch_size: int = 8, device: str | torch.device = "cpu", cell_score: str = "gated",
                    show_progress: bool = False) -> Predictions:
    """The model's predictions for the mosaics (one `image_id` per mosaic; cells in `mosaic_cell_truth` order).
    Crop-family models only: a mosaic has no field for a dense model to see."""
    require_cell_score(cell_score)
    family = get_family(loaded.config.family)
    if family.inputs != "crops":
        raise ValueError(f"mosaic bags hold cell crops from several fields; a {family.name} model reads whole "
                         "fields and cannot predict them (use a crop-family model)")
    if not mosaics:
        raise ValueError("no mosaics to predict")
    opened = open_caches(caches)
    return predict_bags(loaded, mosaic_bag_inputs(opened, mosaics), batch_size, device, show_progress,
                        total=len(mosaics), cell_score=cell_score)


@dataclass(frozen=True)
class MosaicEvaluation:
    """`score` (cell mAP and counts), `truth` (`mosaic_cell_truth`) and the `N,K` cell scores aligned with it."""

    score: MosaicScore
    truth: pd.DataFrame
    cell_probs: np.ndarray
    cell_score: str


def evaluate_mosaics(loaded: LoadedModel, caches: Sequence[CacheLike], mosaics: Sequence[Mosaic],
                     batch_size: int = 8, device: str | torch.device = "cpu", cell_score: str = "gated",
                     show_progress: bool = False) -> MosaicEvaluation:
    """Predict the mosaics (`predict_mosaics`) and score every cell against its source image's label
    (`mil.mosaics.score_mosaic_cells`)."""
    predictions = predict_mosaics(loaded, caches, mosaics, batch_size, device, cell_score, show_progress)
    truth = mosaic_cell_truth(mosaics)
    cells = predictions.cells
    aligned = len(cells) == len(truth) and (cells["source_image_id"].to_numpy()
                                            == truth["source_image_id"].to_numpy()).all()
    if not aligned:
        raise RuntimeError("mosaic predictions are not aligned with the mosaic truth table")
    probs = cells[list(CLASS_NAMES[: predictions.image_probs.shape[1]])].to_numpy(dtype=np.float64)
    return MosaicEvaluation(score_mosaic_cells(probs, truth), truth, probs, cell_score)
