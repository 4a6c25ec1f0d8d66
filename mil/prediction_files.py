"""The files `scripts/predict.py` writes, and reading them back (for evaluation, maps and reports).

| file | content |
|---|---|
| `submission.csv` | Kaggle 2018 format `Id,Predicted`: class ids at or above each class's fitted threshold |
| `images.csv` | `image_id`, `n_cells`, `n_cells_pooled`, `predicted` (ids, space-separated), 28 probability columns named by class |
| `cells.csv` | one row per cell: `image_id`, `cell_id`, bbox, `centroid_y`, `centroid_x` (working-size px), `area`, `nucleus_area`, `qc_flags`, `qc_flag_names`, `used_for_image`, 28 class-probability columns (by the manifest's `cell_score`), `top_label_id`, `top_label`, `top_probability`, `attention` |
| `cells.parquet` | the same table (when pyarrow is installed) |
| `attention.h5` | `attention` `C,A` float32: each cell's raw attention (A = 1, or 28 for per-class heads), rows as in cells.csv |
| `pixel_probabilities.h5` | dense models only: per-pixel class probabilities of each image (see `hpa_cells.pixel_maps`) |
| `manifest.json` | `model` (the first model folder), `models` (every member; several = an ensemble), `families`, `cache`, `pixel_maps`, `cell_score` and `cell_score_rule` (what the cells' class probabilities are: `gated` = sqrt(cell x image probability), or `cell`), `ensemble_rule` (ensembles), thresholds, counts, package version |
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from hpa_cells import __version__
from hpa_cells.classes import CLASS_NAMES
from hpa_cells.labels import write_submission
from mil.inference import CELL_SCORES, Predictions

logger = logging.getLogger(__name__)


class PredictionFilesError(ValueError):
    """A prediction folder that lacks a file or whose files disagree."""


def _flag_names(values: np.ndarray, names: dict[str, int]) -> list[str]:
    ordered = sorted(names.items(), key=lambda item: item[1])
    return ["|".join(n for n, bit in ordered if int(v) & bit) for v in values]


def _atomic_csv(frame: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    frame.to_csv(tmp, index=False, float_format="%.5f")
    os.replace(tmp, path)


def write_prediction_files(predictions: Predictions, out_dir: Path, manifest: dict,
                           qc_flag_names: dict[str, int]) -> dict[str, Path]:
    """Write every file of the table above into `out_dir`; returns name -> path."""
    import h5py

    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    labels = predictions.predicted_labels()
    paths["submission"] = write_submission(out_dir / "submission.csv", labels)

    cells = predictions.cells.drop(columns=[c for c in ("image_index", "scale") if c in predictions.cells.columns])
    cells.insert(cells.columns.get_loc("qc_flags") + 1, "qc_flag_names",
                 _flag_names(cells["qc_flags"].to_numpy(), qc_flag_names))
    counts = cells.groupby("image_id", sort=False).agg(n_cells=("cell_id", "size"),
                                                        n_cells_pooled=("used_for_image", "sum"))
    images = pd.DataFrame({"image_id": predictions.image_ids})
    images = images.join(counts, on="image_id")
    images["predicted"] = [" ".join(str(c) for c in labels[i]) for i in predictions.image_ids]
    for c, name in enumerate(CLASS_NAMES[: predictions.image_probs.shape[1]]):
        images[name] = predictions.image_probs[:, c]
    paths["images"] = out_dir / "images.csv"
    _atomic_csv(images, paths["images"])
    paths["cells"] = out_dir / "cells.csv"
    _atomic_csv(cells, paths["cells"])
    try:
        import pyarrow  # noqa: F401

        paths["cells_parquet"] = out_dir / "cells.parquet"
        cells.to_parquet(paths["cells_parquet"], index=False)
    except ImportError:
        logger.info("pyarrow not installed: cells.parquet not written (pip install 'hpa-cells[parquet]')")
    paths["attention"] = out_dir / "attention.h5"
    with h5py.File(paths["attention"], "w") as f:
        f.create_dataset("attention", data=predictions.cell_attention.astype(np.float32), compression="gzip")
        f.attrs["rows"] = "rows of cells.csv"
    record = {**manifest, "cell_score": predictions.cell_score, "cell_score_rule": CELL_SCORES[predictions.cell_score],
              "thresholds": [float(t) for t in predictions.thresholds], "n_images": len(images),
              "n_cells": len(cells), "package_version": __version__}
    from hpa_cells.pixel_maps import PIXEL_MAPS_FILE

    if manifest.get("pixel_maps") and (out_dir / PIXEL_MAPS_FILE).is_file():
        paths["pixel_maps"] = out_dir / PIXEL_MAPS_FILE
    paths["manifest"] = out_dir / "manifest.json"
    paths["manifest"].write_text(json.dumps(record, indent=2, default=str) + "\n")
    return paths


def read_image_predictions(pred_dir: Path) -> pd.DataFrame:
    """images.csv with a `predicted_ids` column of tuples."""
    path = pred_dir / "images.csv"
    if not path.is_file():
        raise PredictionFilesError(f"{pred_dir} is not a prediction folder: {path.name} is missing")
    frame = pd.read_csv(path, dtype={"image_id": str, "predicted": str}, keep_default_na=False)
    missing = [c for c in ("image_id", "predicted", *CLASS_NAMES) if c not in frame.columns]
    if missing:
        raise PredictionFilesError(f"{path}: missing columns {missing[:5]}")
    frame["predicted_ids"] = [tuple(int(x) for x in s.split()) for s in frame["predicted"]]
    return frame


def read_cell_predictions(pred_dir: Path) -> pd.DataFrame:
    path = pred_dir / "cells.csv"
    if not path.is_file():
        raise PredictionFilesError(f"{pred_dir} is not a prediction folder: {path.name} is missing")
    return pd.read_csv(path, dtype={"image_id": str, "qc_flag_names": str}, keep_default_na=False)


def read_manifest(pred_dir: Path) -> dict:
    path = pred_dir / "manifest.json"
    if not path.is_file():
        raise PredictionFilesError(f"{pred_dir} is not a prediction folder: {path.name} is missing")
    return json.loads(path.read_text())
