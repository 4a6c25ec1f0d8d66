"""Machine-readable maps at the original image size (OME-TIFF, `CYX`): `cells.ome.tif` (cell, nucleus and
top-label images), `probabilities.ome.tif` (one uint8 plane per class) and, for dense models,
`pixel_probabilities.ome.tif` (see `hpa_cells.maps` for the layouts)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hpa_cells.atomic_files import atomic_output
from hpa_cells.classes import CLASS_NAMES
from hpa_cells.images import resize_mask
from hpa_cells.maps.prediction_run import FieldView
from hpa_cells.pixel_maps import resize_planes
from hpa_cells.predictions import PredictionFolderError

CELLS_TIFF = "cells.ome.tif"
PROBABILITIES_TIFF = "probabilities.ome.tif"
PIXEL_PROBABILITIES_TIFF = "pixel_probabilities.ome.tif"
CELLS_TIFF_CHANNELS: tuple[str, ...] = ("cells", "nuclei", "top_label")


def original_size_planes(view: FieldView) -> tuple[np.ndarray, np.ndarray]:
    """(labels `3,H0,W0` uint16: cells, nuclei, top_label; probabilities `28,H0,W0` uint8 = round(255 p)) at the
    original image size."""
    size = view.original_hw
    cells = resize_mask(view.cells_hw, size)
    nuclei = resize_mask(view.nuclei_hw, size)
    top = view.cell_lookup(view.cells["top_label_id"].to_numpy(dtype=np.uint16) + 1, fill=0).astype(np.uint16)
    labels = np.stack([cells, nuclei, top[cells]])
    probs = view.cells[list(CLASS_NAMES)].to_numpy(dtype=np.float64)
    scaled = np.clip(np.round(probs * 255.0), 0, 255).astype(np.uint8)
    per_class = np.ascontiguousarray(view.cell_lookup(scaled, fill=0).T)  # 28, max id + 1
    return labels, np.take(per_class, cells, axis=1)


def original_size_pixel_planes(view: FieldView) -> np.ndarray:
    """`28,H0,W0` uint8: a dense model's pixel map at the original image size (bilinear), 0 outside the cells."""
    if view.pixel_probs is None:
        raise PredictionFolderError(f"image {view.image_id}: no pixel map (pixel maps need a dense model)")
    cells = resize_mask(view.cells_hw, view.original_hw)
    return resize_planes(view.pixel_probs, view.original_hw) * (cells > 0)


def _write_ome(path: Path, planes_cyx: np.ndarray, channel_names: Sequence[str]) -> Path:
    """Write `C,Y,X` planes as a zlib-compressed OME-TIFF with named channels (atomically)."""
    import tifffile

    with atomic_output(path) as partial:
        tifffile.imwrite(partial, planes_cyx, ome=True, photometric="minisblack", compression="zlib",
                         metadata={"axes": "CYX", "Channel": {"Name": list(channel_names)}})
    return path


def write_pixel_ome_map(view: FieldView, out_dir: Path) -> Path:
    """Write `pixel_probabilities.ome.tif` (see `hpa_cells.maps`) into `out_dir`."""
    return _write_ome(out_dir / PIXEL_PROBABILITIES_TIFF, original_size_pixel_planes(view), CLASS_NAMES)


def write_ome_maps(view: FieldView, out_dir: Path) -> tuple[Path, Path]:
    """Write `cells.ome.tif` and `probabilities.ome.tif` (see `hpa_cells.maps`) into `out_dir`."""
    labels, probs = original_size_planes(view)
    return (_write_ome(out_dir / CELLS_TIFF, labels, CELLS_TIFF_CHANNELS),
            _write_ome(out_dir / PROBABILITIES_TIFF, probs, CLASS_NAMES))
