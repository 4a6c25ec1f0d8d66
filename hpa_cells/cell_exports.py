"""The per-cell table of a prediction folder in the formats analysis tools read: Parquet and AnnData (.h5ad).

`cells.csv` (written by scripts/predict.py) is the source: one row per cell, 28 probability columns named by
class, the top label, attention, QC flags and the centroid in working-size pixels.

- `cells.parquet`: the same table, typed (predict.py writes it too; `write_cells_parquet` makes it for a
  folder that lacks it). Needs pyarrow, a dependency of the package.
- `cells.h5ad` (`write_h5ad`, needs the optional extra: ``pip install 'hpa-cells[anndata]'``): cells as
  observations for scanpy/squidpy. `X` = the 28 probabilities (float32, cells x classes); `var` is indexed
  by class name with `class_id` and `threshold` (the class's image-level threshold); `obs` is indexed by
  `"{image_id}:{cell_id}"` and holds every other column of cells.csv (image_id and top_label as
  categoricals); `obsm["spatial"]` = the centroids as (x, y) in working-size pixels (squidpy's order);
  `uns["hpa_cells"]` records the model, cache, package version and the coordinate convention.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from hpa_cells.atomic_files import atomic_output
from hpa_cells.classes import CLASS_NAMES, NUM_CLASSES
from hpa_cells.predictions import (
    CELLS_FILE,
    CELLS_PARQUET_FILE,
    PredictionFolderError,
    read_prediction_folder,
)

if TYPE_CHECKING:
    import anndata

logger = logging.getLogger(__name__)

ANNDATA_INSTALL_HINT = "pip install 'hpa-cells[anndata]'"

class ExportDependencyError(ImportError):
    """An optional package needed for an export format is not installed; the message says how to install it."""


def read_cell_table(pred_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """cells.csv of a prediction folder, with its columns checked (image ids kept as strings); a
    `PredictionFolderError` names the file (and line) when it is missing or damaged."""
    return read_prediction_folder(pred_dir).cells


def write_cells_parquet(pred_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> Path:
    """Write cells.csv as Parquet (default `{pred_dir}/cells.parquet`); returns the path."""
    try:
        import pyarrow  # noqa: F401
    except ImportError as error:
        raise ExportDependencyError("writing Parquet needs pyarrow: pip install pyarrow") from error
    target = Path(out) if out is not None else Path(pred_dir) / CELLS_PARQUET_FILE
    table = read_cell_table(pred_dir)
    with atomic_output(target) as partial:
        table.to_parquet(partial, index=False)
    return target


def cells_to_anndata(pred_dir: str | os.PathLike[str]) -> anndata.AnnData:
    """The prediction folder's cells as an AnnData (layout in the module docstring)."""
    try:
        import anndata
    except ImportError as error:
        raise ExportDependencyError(f"writing .h5ad needs the anndata package: {ANNDATA_INSTALL_HINT}") from error
    pred_dir = Path(pred_dir)
    folder = read_prediction_folder(pred_dir)
    table = folder.cells
    # a folder without manifest.json (cells.csv alone) exports with unknown thresholds
    manifest = folder.manifest if folder.has_manifest else {}
    thresholds = folder.thresholds if folder.has_manifest else np.full(NUM_CLASSES, np.nan)
    probabilities = table[list(CLASS_NAMES)].to_numpy(dtype=np.float32)
    obs = table.drop(columns=[*CLASS_NAMES, "centroid_y", "centroid_x"]).copy()
    obs.index = pd.Index([f"{i}:{c}" for i, c in zip(table["image_id"], table["cell_id"], strict=True)], dtype=object)
    if obs.index.has_duplicates:
        raise PredictionFolderError(f"{pred_dir / CELLS_FILE}: (image_id, cell_id) pairs are not unique")
    obs["image_id"] = pd.Categorical(table["image_id"].astype(object).to_numpy())
    obs["top_label"] = pd.Categorical(table["top_label"].astype(object).to_numpy(), categories=list(CLASS_NAMES))
    for column in obs.columns:
        if obs[column].dtype != "category" and not pd.api.types.is_numeric_dtype(obs[column]) \
                and not pd.api.types.is_bool_dtype(obs[column]):
            obs[column] = obs[column].astype(str).astype(object)
    var = pd.DataFrame({"class_id": np.arange(NUM_CLASSES), "threshold": thresholds},
                       index=pd.Index(list(CLASS_NAMES), dtype=object))
    spatial = table[["centroid_x", "centroid_y"]].to_numpy(dtype=np.float64)
    uns = {"hpa_cells": {
        "model": str(manifest.get("model", "")),
        "cache": str(manifest.get("cache", "")),
        "package_version": str(manifest.get("package_version", "")),
        "spatial": "obsm['spatial'] = cell centroids (x, y) in working-size pixels of each image",
        "source": str(pred_dir.resolve() / CELLS_FILE),
    }}
    return anndata.AnnData(X=probabilities, obs=obs, var=var, obsm={"spatial": spatial}, uns=uns)


def write_h5ad(pred_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> Path:
    """Write the folder's cells as `.h5ad` (default `{pred_dir}/cells.h5ad`); raises ExportDependencyError
    naming the install command when anndata is missing."""
    adata = cells_to_anndata(pred_dir)
    target = Path(out) if out is not None else Path(pred_dir) / "cells.h5ad"
    with atomic_output(target) as partial:
        adata.write_h5ad(partial)
    logger.info("wrote %d cells x %d classes to %s", adata.n_obs, adata.n_vars, target)
    return target
