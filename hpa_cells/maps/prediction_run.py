"""Inputs of the maps: a prediction folder (images.csv, cells.csv, manifest.json, an optional pixel map file),
read through the one reader (`hpa_cells.predictions.read_prediction_folder`) and opened with its cell cache
(`PredictionRun`), and one image's view of it (`FieldView`). Problems are the prediction folder's one error
class, `hpa_cells.predictions.PredictionFolderError`; one image whose pixels cannot be had is a `FieldInputError`
(a subclass), which `write_maps` records for that image and goes on.

Where the pixels come from: a schema-2 cache stores each field as segmented (`image_pixels`, working size), and
the maps are drawn from it, so they need no input file (moved or deleted files do not matter; the files are not
read even when present). A schema-1 cache stores no pixels: its fields are read from the input folder recorded in
the cache (or `images_dir`) at the working size."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np
import pandas as pd

from hpa_cells.cache import CellCache
from hpa_cells.classes import CLASS_NAMES, NUM_CLASSES
from hpa_cells.images import ImageReadError, read_sample
from hpa_cells.pixel_maps import PixelMaps
from hpa_cells.predictions import PredictionFolder, PredictionFolderError, read_prediction_folder


class FieldInputError(PredictionFolderError):
    """One image's pixels cannot be read (a schema-1 cache whose input file is missing or unreadable); the
    message names the image and the file."""


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


class PredictionRun:
    """A prediction folder opened for drawing: its tables, thresholds, cell cache and input images.

    `folder` is the `PredictionFolder` (the one reader); `manifest`, `images`, `cells` and `thresholds` are its
    tables, read and checked when the run is opened.

    `cache_path` / `images_dir` override the locations recorded in manifest.json and the cache (for a moved
    folder); the input images are needed only for a schema-1 cache (a schema-2 cache stores the pixels, see the
    module docstring). A context manager: closes the cache handle.
    """

    def __init__(self, pred_dir: str | os.PathLike[str] | PredictionFolder,
                 cache_path: str | os.PathLike[str] | None = None,
                 images_dir: str | os.PathLike[str] | None = None) -> None:
        self.folder = read_prediction_folder(pred_dir)
        self.pred_dir = self.folder.folder
        self.manifest: dict = self.folder.manifest  # first: a folder without one is "not a prediction folder"
        self.images = self.folder.images
        self.cells = self.folder.cells
        self.thresholds = self.folder.thresholds
        recorded_cache = self.folder.cache_path
        self.cache_path = Path(cache_path) if cache_path is not None else Path(recorded_cache or "")
        if not self.cache_path.is_file():
            raise PredictionFolderError(
                f"cell cache {self.cache_path} (from {self.folder.manifest_path}) not found; "
                "pass the cache's new location"
            )
        self.cache = CellCache(self.cache_path)
        self.provenance = self.cache.provenance
        recorded_images = self.provenance["parameters"].get("images_dir")
        self.images_dir = Path(images_dir) if images_dir is not None else Path(recorded_images or "")
        if not self.cache.has_full_images and not self.images_dir.is_dir():
            self.cache.close()
            raise PredictionFolderError(
                f"input images folder {self.images_dir} (recorded in {self.cache_path}) not found; this schema_version "
                f"{self.cache.schema_version} cache stores no pixels, so the maps read the input files: pass the "
                "folder's new location (scripts/make_maps.py --images DIR), or segment again for a cache that stores "
                "them"
            )
        table = self.cache.image_table().set_index("image_id")
        self._original_hw = {i: (int(r.original_h), int(r.original_w)) for i, r in table.iterrows()}
        self.cache_labels = {i: r.label_ids for i, r in table.iterrows() if r.has_labels}
        self._rows = {image_id: i for i, image_id in enumerate(self.images["image_id"])}
        self._cells_of = {image_id: rows for image_id, rows in self.cells.groupby("image_id", sort=False).indices.items()}
        pixel_maps_path = self.folder.pixel_maps_path
        self.pixel_maps = PixelMaps(pixel_maps_path) if pixel_maps_path is not None else None

    @property
    def image_ids(self) -> list[str]:
        return list(self.images["image_id"])

    def field(self, image_id: str) -> FieldView:
        """The image's field (read from the input folder at the working size), masks and predictions."""
        if image_id not in self._rows:
            raise KeyError(f"image {image_id!r} is not in {self.pred_dir / 'images.csv'}")
        cells_hw, nuclei_hw = self.cache.full_masks(image_id)
        image = self.pixels(image_id, tuple(cells_hw.shape))
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

    def pixels(self, image_id: str, shape_hw: tuple[int, int]) -> np.ndarray:
        """The image's `4,H,W` uint8 field at working size: the cache's stored pixels (schema 2), else its input
        files (schema 1; FieldInputError naming the image and the file when one is missing or unreadable)."""
        if self.cache.has_full_images:
            return self.cache.full_image(image_id)
        try:
            return read_sample(self.images_dir, image_id, size=shape_hw)
        except (ImageReadError, OSError) as err:
            raise FieldInputError(
                f"image {image_id}: {err} (a schema_version {self.cache.schema_version} cache stores no pixels, so "
                "its maps read the input files)") from err

    def close(self) -> None:
        self.cache.close()
        if self.pixel_maps is not None:
            self.pixel_maps.close()

    def __enter__(self) -> PredictionRun:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
