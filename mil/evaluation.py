"""Scoring a prediction folder against image labels and, for synthetic data, per-cell truth.

Cell-level mAP is reported twice so segmentation errors and MIL errors can be told apart:
`cell_map` scores the predicted cells of the project's segmentation (matched to true cells at IoU >= 0.6, misses
and extra cells counted), `cell_map_true_masks` re-runs the same model on crops cut from the true masks (a
perfect segmentation), so it measures the MIL alone. For an ensemble (manifest `models`), every member is re-run
on the true masks and the members' cell probabilities averaged, as `scripts/predict.py` does; a dense member sees
the true label map over the whole field.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from hpa_cells.classes import CLASS_NAMES, NUM_CLASSES
from hpa_cells.images import read_label_mask, read_sample, resize_image, resize_mask
from hpa_cells.labels import read_labels, to_multi_hot
from hpa_cells.metrics import (  # noqa: F401  (TruthFolderError is part of this module's interface)
    TruthFolderError,
    cell_level_map,
    macro_f1,
    per_class_f1,
    read_cell_truth,
    read_true_cell_mask,
)
from mil.prediction_files import (
    PredictionFilesError,
    read_cell_predictions,
    read_image_predictions,
    read_manifest,
)

logger = logging.getLogger(__name__)


@dataclass
class EvaluationReport:
    n_images: int
    image_macro_f1: float
    per_class_f1: dict[str, float | None]
    images_without_labels: int = 0
    cell_map: float | None = None
    cell_map_true_masks: float | None = None
    per_class_cell_ap: dict[str, float | None] = field(default_factory=dict)
    per_class_cell_ap_true_masks: dict[str, float | None] = field(default_factory=dict)
    cells_true: int | None = None
    cells_matched: int | None = None
    cells_predicted: int | None = None
    cell_score: str | None = None
    """The prediction folder's cell score (`mil.inference.CELL_SCORES`) that the cell mAPs rank by."""

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def lines(self) -> list[str]:
        out = [f"images scored: {self.n_images} (predicted images without labels: {self.images_without_labels})",
               f"image-level macro F1: {self.image_macro_f1:.4f}"]
        if self.cell_map is not None:
            out.append(f"cell scores: {self.cell_score}")
            out.append(f"cell-level mAP, project segmentation: {self.cell_map:.4f} "
                       f"({self.cells_matched}/{self.cells_true} true cells matched at IoU>=0.6, "
                       f"{self.cells_predicted} predicted)")
        if self.cell_map_true_masks is not None:
            out.append(f"cell-level mAP, true masks: {self.cell_map_true_masks:.4f}")
        out.append(f"{'class':34s} {'image F1':>9s}" + (f" {'cell AP':>8s} {'AP(true)':>8s}" if self.cell_map is not None else ""))
        for name in CLASS_NAMES:
            f1 = self.per_class_f1.get(name)
            row = f"{name:34s} {'-' if f1 is None else f'{f1:.3f}':>9s}"
            if self.cell_map is not None:
                ap = self.per_class_cell_ap.get(name)
                ap_t = self.per_class_cell_ap_true_masks.get(name)
                row += f" {'-' if ap is None else f'{ap:.3f}':>8s} {'-' if ap_t is None else f'{ap_t:.3f}':>8s}"
            out.append(row)
        return out


def _named(values: np.ndarray) -> dict[str, float | None]:
    return {CLASS_NAMES[k]: (None if np.isnan(v) else float(v)) for k, v in enumerate(values)}


def probs_by_cell(cells: pd.DataFrame) -> dict[str, dict[int, np.ndarray]]:
    """image id -> {cell id: `K` probabilities} from a cells.csv table (class-name columns)."""
    probs = cells[list(CLASS_NAMES)].to_numpy(dtype=np.float64)
    out: dict[str, dict[int, np.ndarray]] = {}
    for image_id, cell_id, row in zip(cells["image_id"], cells["cell_id"], probs, strict=True):
        out.setdefault(str(image_id), {})[int(cell_id)] = row
    return out


def evaluate_predictions(pred_dir: Path, labels_path: Path, truth_dir: Path | None = None,
                         device: str = "cpu") -> EvaluationReport:
    images = read_image_predictions(pred_dir)
    labels = read_labels(labels_path)
    scored = images[images["image_id"].isin(labels)]
    if scored.empty:
        raise ValueError(f"none of the {len(images)} predicted images of {pred_dir} has a label in {labels_path}")
    y_true = to_multi_hot([labels[i] for i in scored["image_id"]])
    y_pred = to_multi_hot(scored["predicted_ids"])
    report = EvaluationReport(
        n_images=len(scored),
        image_macro_f1=macro_f1(y_true, y_pred),
        per_class_f1=_named(per_class_f1(y_true, y_pred)),
        images_without_labels=len(images) - len(scored),
    )
    if truth_dir is None:
        return report
    _add_cell_scores(report, pred_dir, truth_dir, device, set(scored["image_id"]))
    return report


def read_cell_masks(cache, truth_dir: Path, image_ids: Sequence[str]) -> tuple[dict[str, np.ndarray],
                                                                              dict[str, np.ndarray]]:
    """(true, predicted) cell masks of `image_ids`: the predicted ones from an open `CellCache`, the true ones from
    the synthetic folder `truth_dir`, resized to the predicted masks' shape."""
    true_masks, pred_masks = {}, {}
    for image_id in image_ids:
        pred_masks[image_id], _ = cache.full_masks(image_id)
        true_masks[image_id] = read_true_cell_mask(truth_dir, image_id, pred_masks[image_id].shape)
    return true_masks, pred_masks


def _add_cell_scores(report: EvaluationReport, pred_dir: Path, truth_dir: Path, device: str,
                     scored_ids: set[str]) -> None:
    """Cell mAP over the same images as the image-level scores (those in the label file)."""
    from hpa_cells.cache import CellCache
    from hpa_cells.crops import CropConfig
    from mil.ensemble import average_predictions
    from mil.inference import CELL_SCORES, FAMILY_INPUTS, bags_from_masks, predict_bags
    from mil.model_folder import load_model

    truth = read_cell_truth(truth_dir)
    manifest = read_manifest(pred_dir)
    # folders written before cell scores were selectable hold the cells' own probabilities
    cell_score = manifest.get("cell_score", "cell")
    if cell_score not in CELL_SCORES:
        raise PredictionFilesError(f"{pred_dir / 'manifest.json'}: unknown cell_score {cell_score!r}; expected one of "
                                   f"{', '.join(CELL_SCORES)}")
    report.cell_score = cell_score
    cells = read_cell_predictions(pred_dir)
    image_ids = [i for i in read_image_predictions(pred_dir)["image_id"] if i in truth and i in scored_ids]
    with CellCache(manifest["cache"]) as cache:
        crop_settings = cache.provenance["parameters"].get("crop", {})
        true_masks, pred_masks = read_cell_masks(cache, truth_dir, image_ids)
    result = cell_level_map(true_masks, truth, pred_masks, probs_by_cell(cells))
    report.cell_map = result.mean_ap
    report.per_class_cell_ap = _named(result.per_class_ap)
    report.cells_true, report.cells_matched, report.cells_predicted = (
        result.n_true_cells, result.n_matched_cells, result.n_pred_cells)

    crop = CropConfig(**crop_settings) if crop_settings else CropConfig()

    def fields():
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

    members = []
    for folder in manifest.get("models") or [manifest["model"]]:
        loaded = load_model(folder, device=device)
        content = FAMILY_INPUTS[loaded.config.family]
        members.append(predict_bags(loaded, bags_from_masks(fields(), crop, content), device=device,
                                    cell_score=cell_score))
    on_truth = average_predictions(members) if len(members) > 1 else members[0]
    result_true = cell_level_map(true_masks, truth, true_masks, probs_by_cell(on_truth.cells), NUM_CLASSES)
    report.cell_map_true_masks = result_true.mean_ap
    report.per_class_cell_ap_true_masks = _named(result_true.per_class_ap)
