"""Writing a prediction folder (the one writer; `scripts/predict.py` and the tests use it).

| file | content |
|---|---|
| `submission.csv` | Kaggle 2018 format `Id,Predicted`: class ids at or above each class's fitted threshold; every test id: the predicted images, then the fields without a prediction (skipped while segmenting, or without cells) with an empty `Predicted` |
| `images.csv` | `image_id`, `n_cells`, `n_cells_pooled`, `predicted` (ids, space-separated), 28 probability columns named by class |
| `cells.csv` | one row per cell: `image_id`, `cell_id`, bbox, `centroid_y`, `centroid_x` (working-size px), `area`, `nucleus_area`, `qc_flags`, `qc_flag_names`, `used_for_image`, 28 class-probability columns (by the manifest's `cell_score`), `top_label_id`, `top_label`, `top_probability`, `attention` |
| `cells.parquet` | the same table (when pyarrow is installed) |
| `attention.h5` | `attention` `C,A` float32: each cell's raw attention (A = 1, or 28 for per-class heads), rows as in cells.csv |
| `pixel_probabilities.h5` | dense models only: per-pixel class probabilities of each image (see `hpa_cells.pixel_maps`) |
| `manifest.json` | `model` (the first model folder), `models` (every member; several = an ensemble), `families`, `cache`, `pixel_maps`, `cell_score` and `cell_score_rule` (what the cells' class probabilities are: `gated` = sqrt(cell x image probability), or `cell`), `ensemble_rule` (ensembles), thresholds, counts (`n_images` = rows of images.csv, `n_cells`, `n_unpredicted`), `unpredicted` (`image_id`, `reason` of each field in submission.csv only), `device` and `batching` (what predict.py ran on and how it grouped the forward passes), package version |

Every file is written atomically (`hpa_cells.atomic_files`), the manifest last: a folder with a manifest is whole.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from hpa_cells import __version__
from hpa_cells.atomic_files import atomic_output, write_json_atomic
from hpa_cells.classes import CLASS_NAMES
from hpa_cells.labels import write_submission
from hpa_cells.pixel_maps import PIXEL_MAPS_FILE
from hpa_cells.predictions.records import (
    ATTENTION_FILE,
    CELL_COLUMNS,
    CELL_SCORES,
    CELLS_FILE,
    CELLS_PARQUET_FILE,
    IMAGES_FILE,
    MANIFEST_FILE,
    SUBMISSION_FILE,
    Predictions,
    format_predicted_ids,
)
from hpa_cells.qc_flags import names_of_bits

logger = logging.getLogger(__name__)

_DROPPED_CELL_COLUMNS = ("image_index", "scale")
"""Columns of `Predictions.cells` that stay in memory (cache row bookkeeping)."""


def _flag_names(values: np.ndarray, names: dict[str, int]) -> list[str]:
    return ["|".join(names_of_bits(v, names)) for v in values]


def _write_csv(frame: pd.DataFrame, path: Path) -> Path:
    with atomic_output(path) as partial:
        frame.to_csv(partial, index=False, float_format="%.5f")
    return path


def cell_table(predictions: Predictions, qc_flag_names: dict[str, int]) -> pd.DataFrame:
    """The cells.csv table of `predictions`: bookkeeping columns dropped, `qc_flag_names` added after
    `qc_flags`; ValueError naming the columns when the table lacks one that readers rely on."""
    cells = predictions.cells.drop(columns=[c for c in _DROPPED_CELL_COLUMNS if c in predictions.cells.columns])
    if "qc_flags" not in cells.columns:
        raise ValueError("the predicted cell table has no qc_flags column")
    cells.insert(cells.columns.get_loc("qc_flags") + 1, "qc_flag_names",
                 _flag_names(cells["qc_flags"].to_numpy(), qc_flag_names))
    missing = [c for c in CELL_COLUMNS if c not in cells.columns]
    if missing:
        raise ValueError(f"the predicted cell table lacks columns {missing[:6]} that {CELLS_FILE} must hold")
    return cells


def image_table(predictions: Predictions, cells: pd.DataFrame, labels: dict[str, tuple[int, ...]]) -> pd.DataFrame:
    """The images.csv table: counts of cells, the predicted class ids and the image probabilities."""
    counts = cells.groupby("image_id", sort=False).agg(n_cells=("cell_id", "size"),
                                                        n_cells_pooled=("used_for_image", "sum"))
    images = pd.DataFrame({"image_id": predictions.image_ids})
    images = images.join(counts, on="image_id")
    images["predicted"] = [format_predicted_ids(labels[i]) for i in predictions.image_ids]
    for c, name in enumerate(CLASS_NAMES[: predictions.image_probs.shape[1]]):
        images[name] = predictions.image_probs[:, c]
    return images


def _write_parquet(cells: pd.DataFrame, path: Path) -> Path | None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        logger.info("pyarrow not installed: %s not written (pip install 'hpa-cells[parquet]')", path.name)
        return None
    with atomic_output(path) as partial:
        cells.to_parquet(partial, index=False)
    return path


def _write_attention(attention: np.ndarray, path: Path) -> Path:
    import h5py

    with atomic_output(path) as partial:
        with h5py.File(partial, "w") as f:
            f.create_dataset("attention", data=attention.astype(np.float32), compression="gzip")
            f.attrs["rows"] = f"rows of {CELLS_FILE}"
    return path


def write_prediction_folder(predictions: Predictions, out_dir: Path, manifest: dict,
                            qc_flag_names: dict[str, int], unpredicted: Mapping[str, str] | None = None
                            ) -> dict[str, Path]:
    """Write every file of the table above into `out_dir`; returns name -> path.

    `unpredicted`: image id -> reason of the test fields without a prediction (the cache's skipped fields, images
    without cells): submission.csv lists them with an empty prediction, the manifest records them; images.csv and
    cells.csv hold the predicted images only. An id both predicted and unpredicted is a ValueError.

    `manifest` holds the run's entries (`model`, `models`, `families`, `cache`, `pixel_maps`, ...); the writer adds
    the cell score and its rule, the thresholds, the counts and the package version. A pixel-map file named by
    `manifest["pixel_maps"]` must already be in `out_dir` (the dense models write it while predicting).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    labels = predictions.predicted_labels()
    unpredicted = dict(unpredicted or {})
    both = [i for i in unpredicted if i in labels]
    if both:
        raise ValueError(f"images {both[:5]} are both predicted and listed as without a prediction")
    paths["submission"] = write_submission(out_dir / SUBMISSION_FILE, {**labels, **{i: () for i in unpredicted}})
    cells = cell_table(predictions, qc_flag_names)
    images = image_table(predictions, cells, labels)
    paths["images"] = _write_csv(images, out_dir / IMAGES_FILE)
    paths["cells"] = _write_csv(cells, out_dir / CELLS_FILE)
    parquet = _write_parquet(cells, out_dir / CELLS_PARQUET_FILE)
    if parquet is not None:
        paths["cells_parquet"] = parquet
    paths["attention"] = _write_attention(predictions.cell_attention, out_dir / ATTENTION_FILE)
    record = {**manifest, "cell_score": predictions.cell_score, "cell_score_rule": CELL_SCORES[predictions.cell_score],
              "thresholds": [float(t) for t in predictions.thresholds], "n_images": len(images),
              "n_cells": len(cells), "n_unpredicted": len(unpredicted),
              "unpredicted": [{"image_id": i, "reason": r} for i, r in unpredicted.items()],
              "package_version": __version__}
    if manifest.get("pixel_maps") and (out_dir / PIXEL_MAPS_FILE).is_file():
        paths["pixel_maps"] = out_dir / PIXEL_MAPS_FILE
    paths["manifest"] = write_json_atomic(out_dir / MANIFEST_FILE, record, default=str)
    return paths
