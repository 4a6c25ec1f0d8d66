"""Evaluation of a prediction folder: the model-free scores of `hpa_cells.scoring` plus the true-mask pass.

Cell-level mAP is reported twice so segmentation errors and MIL errors can be told apart:
`cell_map` (from `hpa_cells.scoring`) scores the predicted cells of the project's segmentation (matched to true
cells at IoU >= 0.6, misses and extra cells counted), `cell_map_true_masks` (here, because it needs the model)
re-runs the same model on crops cut from the true masks (a perfect segmentation), so it measures the MIL alone.
For an ensemble (manifest `models`), every member is re-run on the true masks and the members' cell
probabilities averaged, as `scripts/predict.py` does; a dense member sees the true label map over the whole field.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from hpa_cells.classes import NUM_CLASSES
from hpa_cells.images import read_label_mask, read_sample, resize_image, resize_mask
from hpa_cells.labels import read_labels
from hpa_cells.metrics import (  # noqa: F401  (TruthFolderError is part of this module's interface)
    TruthFolderError,
    cell_level_map,
    read_cell_truth,
)
from hpa_cells.predictions import PredictionFolder, probs_by_cell, read_prediction_folder
from hpa_cells.scoring import FolderScores, named_scores, read_cell_masks, score_prediction_folder

logger = logging.getLogger(__name__)

EvaluationReport = FolderScores
"""What `evaluate_predictions` returns (the name evaluate.py's callers know)."""


def evaluate_predictions(pred_dir: Path, labels_path: Path, truth_dir: Path | None = None,
                         device: str = "cpu") -> FolderScores:
    """Score `pred_dir` against the label file and, with `truth_dir`, per-cell truth (both cell mAPs)."""
    folder = read_prediction_folder(pred_dir)
    images = folder.images
    labels = read_labels(labels_path)
    if not images["image_id"].isin(labels).any():
        raise ValueError(f"none of the {len(images)} predicted images of {pred_dir} has a label in {labels_path}")
    report = score_prediction_folder(folder, labels, truth_dir)
    if truth_dir is not None:
        _add_true_mask_scores(report, folder, Path(truth_dir), device)
    return report


def _true_fields(truth_dir: Path, image_ids: Sequence[str], true_masks: dict[str, np.ndarray]
                 ) -> Iterator[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """(image id, field, true cell mask, true nucleus mask) of the truth folder's images at the masks' size."""
    for image_id in image_ids:
        image = read_sample(truth_dir, image_id)
        shape = true_masks[image_id].shape
        if image.shape[1:] != shape:
            image = resize_image(image, shape)
        nuclei_path = truth_dir / f"{image_id}_nuclei.png"
        nuclei = read_label_mask(nuclei_path) if nuclei_path.is_file() else np.zeros(shape, np.uint16)
        if nuclei.shape != shape:
            nuclei = resize_mask(nuclei, shape)
        yield image_id, image, true_masks[image_id], nuclei


def _add_true_mask_scores(report: FolderScores, folder: PredictionFolder, truth_dir: Path, device: str) -> None:
    """`cell_map_true_masks`: the folder's model(s) re-run on the true cells of the images the cell mAP scored."""
    from hpa_cells.cache import CellCache
    from hpa_cells.crops import CropConfig
    from mil.ensemble import average_predictions
    from mil.families import get_family
    from mil.inference import bags_from_masks, predict_bags
    from mil.model_folder import load_model

    truth = read_cell_truth(truth_dir)
    image_ids = report.cell_image_ids
    with CellCache(folder.cache_path) as cache:
        crop_settings = cache.provenance["parameters"].get("crop", {})
        true_masks, _ = read_cell_masks(cache, truth_dir, image_ids)
    crop = CropConfig(**crop_settings) if crop_settings else CropConfig()
    members = []
    for model_folder in folder.model_folders:
        loaded = load_model(model_folder, device=device)
        bags = bags_from_masks(_true_fields(truth_dir, image_ids, true_masks), crop,
                               get_family(loaded.config.family).inputs)
        members.append(predict_bags(loaded, bags, device=device, cell_score=folder.cell_score))
    on_truth = average_predictions(members) if len(members) > 1 else members[0]
    result = cell_level_map(true_masks, truth, true_masks, probs_by_cell(on_truth.cells), NUM_CLASSES)
    report.cell_map_true_masks = result.mean_ap
    report.per_class_cell_ap_true_masks = named_scores(result.per_class_ap)
