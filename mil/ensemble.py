"""Ensembles of model folders (any mix of crop and dense models): averaged predictions.

The ensemble's image and per-cell probabilities are the means of its members'; its per-class thresholds are the
means of the members' fitted thresholds (each member's threshold is fitted to its own validation predictions, so
the mean is the simple choice that needs no extra held-out data; refit on out-of-fold ensemble predictions when
exact F1 matters). A cell's `attention` is the mean of the members' attention, `used_for_image` whether any member
pooled it; `cell_attention` (attention.h5) holds one column per member: each member's `attention` column.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from hpa_cells.classes import CLASS_NAMES
from hpa_cells.predictions import Predictions
from mil.families import get_family
from mil.inference import predict_cache, require_cell_score
from mil.model_folder import LoadedModel

logger = logging.getLogger(__name__)

ENSEMBLE_RULE = ("mean of the members' image and per-cell probabilities; thresholds = mean of the members' "
                 "thresholds; cell attention = mean of the members' attention")


def average_predictions(members: Sequence[Predictions], names: Sequence[str] | None = None) -> Predictions:
    """The ensemble of `members` (predictions of the same images and cells, e.g. from the same cache)."""
    if not members:
        raise ValueError("an ensemble needs at least one member")
    names = list(names) if names is not None else [f"member {i}" for i in range(len(members))]
    first = members[0]
    keys = first.cells[["image_id", "cell_id"]].reset_index(drop=True)
    for member, name in zip(members[1:], names[1:], strict=True):
        if member.image_ids != first.image_ids:
            raise ValueError(f"{name} predicted other images than {names[0]} ({len(member.image_ids)} vs "
                             f"{len(first.image_ids)}); ensemble members must predict the same cache")
        if not member.cells[["image_id", "cell_id"]].reset_index(drop=True).equals(keys):
            raise ValueError(f"{name} predicted other cells than {names[0]}; ensemble members must use the same cache")
        if member.cell_score != first.cell_score:
            raise ValueError(f"{name} scored its cells by {member.cell_score!r}, {names[0]} by {first.cell_score!r}; "
                             "ensemble members must use the same cell score")
    classes = list(CLASS_NAMES[: first.image_probs.shape[1]])
    cells = first.cells.copy()
    probs = np.mean([m.cells[classes].to_numpy(dtype=np.float64) for m in members], axis=0)
    cells[classes] = probs
    top = probs.argmax(axis=1)
    cells["top_label_id"] = top
    cells["top_label"] = [CLASS_NAMES[t] for t in top]
    cells["top_probability"] = probs[np.arange(len(cells)), top]
    attention = np.stack([m.cells["attention"].to_numpy(dtype=np.float64) for m in members], axis=1)
    cells["attention"] = attention.mean(axis=1)
    cells["used_for_image"] = np.any([m.cells["used_for_image"].to_numpy(dtype=bool) for m in members], axis=0)
    return Predictions(list(first.image_ids), np.mean([m.image_probs for m in members], axis=0),
                       pd.DataFrame(cells), attention.astype(np.float32),
                       np.mean([m.thresholds for m in members], axis=0), first.cell_score)


def predict_members(members: Sequence[LoadedModel], cache_path: Path, out_dir: Path, batch_size: int | None = None,
                    device: str = "cpu", show_progress: bool = True,
                    cell_score: str = "gated", *, cell_budget: int | None = None) -> tuple[Predictions, dict]:
    """Predict a cache with one model or an ensemble; returns the predictions and the manifest entries naming
    every member; `cell_score` (`hpa_cells.predictions.CELL_SCORES`) scores each member's cells before averaging. Dense
    members' pixel maps go to `out_dir/pixel_probabilities.h5` (their mean for several). `batch_size` and
    `cell_budget` as in `mil.inference.predict_bags` (None: by device)."""
    require_cell_score(cell_score)
    from hpa_cells.pixel_maps import PIXEL_MAPS_FILE, average_pixel_map_files

    out_dir.mkdir(parents=True, exist_ok=True)
    final_maps = out_dir / PIXEL_MAPS_FILE
    final_maps.unlink(missing_ok=True)  # never leave a previous run's maps beside new predictions
    dense = [i for i, m in enumerate(members) if get_family(m.config.family).pixel_maps]
    member_maps = {i: final_maps if len(dense) == 1 else out_dir / f".member{i}.{PIXEL_MAPS_FILE}" for i in dense}
    predictions = []
    for index, loaded in enumerate(members):
        if len(members) > 1:
            logger.info("ensemble member %d/%d: %s (%s)", index + 1, len(members), loaded.folder, loaded.config.family)
        predictions.append(predict_cache(loaded, cache_path, batch_size, device, show_progress, member_maps.get(index),
                                         cell_score=cell_score, cell_budget=cell_budget))
    if len(dense) > 1:
        average_pixel_map_files([member_maps[i] for i in dense], final_maps)
        for i in dense:
            member_maps[i].unlink()
    folders = [str(Path(m.folder).resolve()) for m in members]
    manifest = {"model": folders[0], "models": folders, "families": [m.config.family for m in members],
                "cache": str(Path(cache_path).resolve()), "pixel_maps": PIXEL_MAPS_FILE if dense else None}
    if len(members) == 1:
        return predictions[0], manifest
    manifest["ensemble_rule"] = ENSEMBLE_RULE
    return average_predictions(predictions, folders), manifest
