"""Annotated fields for training and scoring segmenters: the real HPA reference fields and synthetic fields.

Real: the five 2021 HPA fields in ../shared/data/hpa2021_subset with cell masks from HPA's own segmentation
(a reference, not hand-drawn truth), resized to the working size (area for images, nearest for masks). They
have no nucleus masks, so nucleus references are derived: the nucleus-channel pixels above an Otsu threshold
inside each reference cell, holes filled, one nucleus per cell (`pseudo_nuclei`).
Synthetic: fields from `hpa_cells.synthetic` with exact cell and nucleus masks.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage

from hpa_cells.channels import NUCLEUS
from hpa_cells.images import read_label_mask, read_sample, resize_mask, scan_folder
from segmentation.cellpose_training import AnnotatedField

logger = logging.getLogger(__name__)

REAL_SUBSET = Path("hpa2021_subset")


def pseudo_nuclei(image_chw: np.ndarray, cells_hw: np.ndarray) -> np.ndarray:
    """A nucleus instance mask (`H,W` int32, ids = cell ids) derived from the nucleus channel inside each cell."""
    blue = cv2.GaussianBlur(image_chw[NUCLEUS].astype(np.float32), (0, 0), 1.0)
    inside = cells_hw > 0
    if not inside.any():
        return np.zeros(cells_hw.shape, np.int32)
    values = blue[inside].astype(np.uint8) if blue.max() <= 255 else (blue[inside] / 257).astype(np.uint8)
    threshold, _ = cv2.threshold(values.reshape(-1, 1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    nuclei = np.where(inside & (blue > threshold), cells_hw, 0).astype(np.int32)
    out = np.zeros_like(nuclei)
    for cell_id, box in enumerate(ndimage.find_objects(nuclei), start=1):
        if box is None:
            continue
        region = nuclei[box] == cell_id
        labelled, n = ndimage.label(region)
        if n > 1:  # keep the largest piece: one nucleus per cell
            sizes = ndimage.sum(region, labelled, range(1, n + 1))
            region = labelled == (int(np.argmax(sizes)) + 1)
        region = ndimage.binary_fill_holes(region) & (cells_hw[box] == cell_id)
        out[box][region] = cell_id
    return out


def real_reference_fields(data_dir: Path, working_size: int, kind: str) -> list[AnnotatedField]:
    """The real fields with reference masks, at `working_size` (longer side), for `kind` 'cells' or 'nuclei'."""
    subset = Path(data_dir) / REAL_SUBSET
    images_dir, masks_dir = subset / "images", subset / "masks"
    if not images_dir.is_dir() or not masks_dir.is_dir():
        raise FileNotFoundError(f"real reference fields not found: expected {images_dir} and {masks_dir}")
    fields = []
    for sample_id in scan_folder(images_dir).ids:
        mask_path = masks_dir / f"{sample_id}_predictedmask.png"
        if not mask_path.is_file():
            logger.warning("no reference mask for %s (looked for %s); skipped", sample_id, mask_path)
            continue
        image = read_sample(images_dir, sample_id, size=working_size)
        cells = resize_mask(read_label_mask(mask_path), image.shape[1:]).astype(np.int32)
        mask = cells if kind == "cells" else pseudo_nuclei(image, cells)
        fields.append(AnnotatedField(sample_id, image, mask))
    if not fields:
        raise FileNotFoundError(f"no real fields with reference masks in {subset}")
    return fields


def synthetic_fields(n: int, seed: int, size: int, kind: str) -> list[AnnotatedField]:
    """`n` synthetic fields with exact masks (cells, or nuclei labelled by their cell id)."""
    from hpa_cells.synthetic.dataset import SyntheticConfig, SyntheticGenerator

    generator = SyntheticGenerator(SyntheticConfig(seed=seed, size=size))
    fields = []
    for index in range(n):
        sample = generator.generate(index)
        mask = sample.cell_mask if kind == "cells" else sample.nucleus_mask
        fields.append(AnnotatedField(sample.image_id, sample.image, mask.astype(np.int32)))
    return fields
