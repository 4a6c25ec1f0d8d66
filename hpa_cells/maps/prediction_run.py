"""Inputs of the maps: a prediction folder (images.csv, cells.csv, manifest.json, an optional pixel map file)
opened with its cell cache and input images (`PredictionRun`), and one image's view of it (`FieldView`)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np
import pandas as pd

from hpa_cells.cache import CellCache
from hpa_cells.classes import CLASS_NAMES, NUM_CLASSES
from hpa_cells.images import read_sample
from hpa_cells.pixel_maps import PIXEL_MAPS_FILE, PixelMaps

IMAGE_COLUMNS: tuple[str, ...] = ("image_id", "predicted", *CLASS_NAMES)
CELL_COLUMNS: tuple[str, ...] = (
    "image_id", "cell_id", "centroid_y", "centroid_x", "qc_flags", "qc_flag_names", "used_for_image",
    *CLASS_NAMES, "top_label_id", "top_probability", "attention",
)


class PredictionFolderError(ValueError):
    """A prediction folder (or the cache and images it points to) that cannot be drawn; names the file."""


@dataclass(frozen=True)
class FieldView:
    """Everything drawn for one image. image_chw `4,H,W` uint8 and the `H,W` uint16 label masks are at
    working size; `cells` holds the image's rows of cells.csv; image_probs and thresholds are `28`;
    pixel_probs (dense models) `28,H,W` uint8 = round(255 x per-pixel probability), 0 outside the cells."""

    image_id: str
    image_chw: np.ndarray
    cells_hw: np.ndarray
    nuclei_hw: np.ndarray
    original_hw: tuple[int, int]
    cells: pd.DataFrame
    image_probs: np.ndarray
    predicted: tuple[int, ...]
    thresholds: np.ndarray
    pixel_probs: np.ndarray | None = None

    def __post_init__(self) -> None:
        height, width = self.cells_hw.shape
        if self.pixel_probs is not None and self.pixel_probs.shape != (NUM_CLASSES, height, width):
            raise PredictionFolderError(
                f"image {self.image_id}: pixel map {self.pixel_probs.shape} does not match its cell mask {self.cells_hw.shape}"
            )
        if self.image_chw.shape != (4, height, width):
            raise PredictionFolderError(
                f"image {self.image_id}: field {self.image_chw.shape} does not match its cell mask {self.cells_hw.shape}"
            )
        if self.nuclei_hw.shape != self.cells_hw.shape:
            raise PredictionFolderError(f"image {self.image_id}: nucleus and cell masks differ in shape")
        missing = sorted(set(self.cells["cell_id"].astype(int)) - set(np.unique(self.cells_hw).tolist()))
        if missing:
            raise PredictionFolderError(
                f"image {self.image_id}: cells {missing[:10]} of cells.csv are not in the cache's cell mask "
                "(were the predictions made from another cache?)"
            )

    def cell_lookup(self, values: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """A table indexed by cell id (0..max id) holding `values` (one per row of `cells`), `fill` elsewhere."""
        ids = self.cells["cell_id"].to_numpy(dtype=np.int64)
        size = int(max(int(self.cells_hw.max()), int(ids.max(initial=0)))) + 1
        values = np.asarray(values)
        lookup = np.full((size, *values.shape[1:]), fill, dtype=values.dtype)
        lookup[ids] = values
        return lookup

    @property
    def flagged(self) -> np.ndarray:
        """`N` bool: cells with any QC flag."""
        return self.cells["qc_flags"].to_numpy(dtype=np.int64) != 0


def _read_table(path: Path, required: Sequence[str], dtypes: dict[str, type]) -> pd.DataFrame:
    if not path.is_file():
        raise PredictionFolderError(f"{path.parent} is not a prediction folder: {path.name} is missing")
    frame = pd.read_csv(path, dtype=dtypes, keep_default_na=False)
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise PredictionFolderError(f"{path}: missing columns {missing[:6]}")
    return frame


class PredictionRun:
    """A prediction folder opened for drawing: its tables, thresholds, cell cache and input images.

    `cache_path` / `images_dir` override the locations recorded in manifest.json and the cache (for a moved
    folder). A context manager: closes the cache handle.
    """

    def __init__(self, pred_dir: str | os.PathLike[str], cache_path: str | os.PathLike[str] | None = None,
                 images_dir: str | os.PathLike[str] | None = None) -> None:
        self.pred_dir = Path(pred_dir)
        manifest_path = self.pred_dir / "manifest.json"
        if not manifest_path.is_file():
            raise PredictionFolderError(f"{self.pred_dir} is not a prediction folder: manifest.json is missing")
        try:
            self.manifest: dict = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as error:
            raise PredictionFolderError(f"{manifest_path}: invalid JSON ({error})") from error
        self.images = _read_table(self.pred_dir / "images.csv", IMAGE_COLUMNS, {"image_id": str, "predicted": str})
        self.images["predicted_ids"] = [tuple(int(x) for x in s.split()) for s in self.images["predicted"]]
        self.cells = _read_table(self.pred_dir / "cells.csv", CELL_COLUMNS,
                                 {"image_id": str, "qc_flag_names": str})
        thresholds = np.asarray(self.manifest.get("thresholds", []), dtype=np.float64)
        if thresholds.shape != (NUM_CLASSES,):
            raise PredictionFolderError(f"{manifest_path}: 'thresholds' must list {NUM_CLASSES} values")
        self.thresholds = thresholds
        recorded_cache = self.manifest.get("cache")
        self.cache_path = Path(cache_path) if cache_path is not None else Path(recorded_cache or "")
        if not self.cache_path.is_file():
            raise PredictionFolderError(
                f"cell cache {self.cache_path} (from {manifest_path}) not found; pass the cache's new location"
            )
        self.cache = CellCache(self.cache_path)
        self.provenance = self.cache.provenance
        recorded_images = self.provenance["parameters"].get("images_dir")
        self.images_dir = Path(images_dir) if images_dir is not None else Path(recorded_images or "")
        if not self.images_dir.is_dir():
            raise PredictionFolderError(
                f"input images folder {self.images_dir} (recorded in {self.cache_path}) not found; "
                "pass the folder's new location"
            )
        table = self.cache.image_table().set_index("image_id")
        self._original_hw = {i: (int(r.original_h), int(r.original_w)) for i, r in table.iterrows()}
        self.cache_labels = {i: r.label_ids for i, r in table.iterrows() if r.has_labels}
        self._rows = {image_id: i for i, image_id in enumerate(self.images["image_id"])}
        self._cells_of = {image_id: rows for image_id, rows in self.cells.groupby("image_id", sort=False).indices.items()}
        pixel_maps_path = self.pred_dir / PIXEL_MAPS_FILE
        self.pixel_maps = PixelMaps(pixel_maps_path) if self.manifest.get("pixel_maps") and pixel_maps_path.is_file() \
            else None

    @property
    def image_ids(self) -> list[str]:
        return list(self.images["image_id"])

    def field(self, image_id: str) -> FieldView:
        """The image's field (read from the input folder at the working size), masks and predictions."""
        if image_id not in self._rows:
            raise KeyError(f"image {image_id!r} is not in {self.pred_dir / 'images.csv'}")
        cells_hw, nuclei_hw = self.cache.full_masks(image_id)
        image = read_sample(self.images_dir, image_id, size=tuple(cells_hw.shape))
        row = self.images.iloc[self._rows[image_id]]
        cells = self.cells.iloc[self._cells_of.get(image_id, [])].reset_index(drop=True)
        pixel_probs = None
        if self.pixel_maps is not None:
            inside = np.isin(cells_hw, cells["cell_id"].to_numpy())  # bilinear resizing must not bleed outside
            pixel_probs = self.pixel_maps.read(image_id, tuple(cells_hw.shape)) * inside
        return FieldView(
            image_id=image_id,
            image_chw=image,
            cells_hw=cells_hw,
            nuclei_hw=nuclei_hw,
            original_hw=self._original_hw[image_id],
            cells=cells,
            image_probs=row[list(CLASS_NAMES)].to_numpy(dtype=np.float64),
            predicted=row["predicted_ids"],
            thresholds=self.thresholds,
            pixel_probs=pixel_probs,
        )

    def close(self) -> None:
        self.cache.close()
        if self.pixel_maps is not None:
            self.pixel_maps.close()

    def __enter__(self) -> PredictionRun:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
