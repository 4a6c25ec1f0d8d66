"""What `CellCacheWriter.add_image` accepts: one image's arrays and cell records, checked and converted to the
stored dtypes (`hpa_cells.cache.schema.ImageRows`) before anything is written.

Every check raises `CellCacheInputError` naming the image and what is wrong; the checks run in a fixed
order, so the same bad input always gets the same message.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from hpa_cells.cache.schema import (
    MAX_LABEL_ID,
    MAX_QC_FLAGS,
    NUM_CHANNELS,
    CellCacheInputError,
    ImageRows,
)
from hpa_cells.classes import NUM_CLASSES
from hpa_cells.crops import CELL_RECORD_COLUMNS

__all__ = ["checked_rows"]


def checked_rows(
    image_id: str,
    crop_size: int,
    crops: np.ndarray,
    masks: np.ndarray,
    cell_records: pd.DataFrame,
    cells_hw: np.ndarray,
    nuclei_hw: np.ndarray,
    image_chw: np.ndarray,
    original_hw: tuple[int, int],
    labels: np.ndarray | None,
) -> ImageRows:
    """Validate one image's arrays and records and convert them to the stored dtypes.

    The checks run in a fixed order (crops and masks, cell records, label masks, image, sizes, labels), and the
    first failing one raises CellCacheInputError naming the image.
    """
    crops, masks = _checked_crops_and_masks(image_id, crop_size, crops, masks)
    cell_ids, qc = _checked_cell_records(image_id, cell_records, crops.shape[0])
    cells_u16, nuclei_u16 = _checked_label_masks(image_id, cells_hw, nuclei_hw)
    image_chw = _checked_image(image_id, image_chw, cells_u16.shape)
    if len(original_hw) != 2 or min(int(v) for v in original_hw) <= 0:
        raise CellCacheInputError(
            f"image {image_id!r}: original_hw must be (height, width) > 0, got {original_hw}"
        )
    labels_u8 = _checked_labels(image_id, labels)
    return ImageRows(
        image_id=image_id,
        crops=crops,
        masks=masks,
        cell_columns=_cell_columns(cell_records, cell_ids, qc),
        cells_hw=cells_u16,
        nuclei_hw=nuclei_u16,
        image_chw=np.ascontiguousarray(image_chw),
        original_hw=(int(original_hw[0]), int(original_hw[1])),
        labels=labels_u8,
    )


def _checked_crops_and_masks(
    image_id: str, crop_size: int, crops: np.ndarray, masks: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """crops N,4,S,S uint8 with N >= 1 and masks N,S,S uint8 holding 0/1, as arrays."""
    s = crop_size
    crops = np.asarray(crops)
    masks = np.asarray(masks)
    if crops.dtype != np.uint8 or crops.ndim != 4 or crops.shape[1:] != (NUM_CHANNELS, s, s):
        raise CellCacheInputError(
            f"image {image_id!r}: crops must be N,{NUM_CHANNELS},{s},{s} uint8; got {crops.dtype} {crops.shape}"
        )
    n = crops.shape[0]
    if n == 0:
        raise CellCacheInputError(
            f"image {image_id!r} has no cells; record it with add_skipped(image_id, reason)"
        )
    if masks.dtype != np.uint8 or masks.shape != (n, s, s):
        raise CellCacheInputError(
            f"image {image_id!r}: masks must be {n},{s},{s} uint8; got {masks.dtype} {masks.shape}"
        )
    if int(masks.max()) > 1:
        raise CellCacheInputError(f"image {image_id!r}: masks must hold 0/1, found {int(masks.max())}")
    return crops, masks


def _checked_cell_records(image_id: str, cell_records: pd.DataFrame, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(cell ids, QC flags) of a DataFrame with crops.CELL_RECORD_COLUMNS, one row per crop, cell ids positive
    and strictly increasing, QC flags within a uint16."""
    if not isinstance(cell_records, pd.DataFrame):
        raise CellCacheInputError(
            f"image {image_id!r}: cell_records must be a DataFrame, got {type(cell_records).__name__}"
        )
    missing = [c for c in CELL_RECORD_COLUMNS if c not in cell_records.columns]
    if missing:
        raise CellCacheInputError(f"image {image_id!r}: cell_records lacks columns {missing}")
    if len(cell_records) != n:
        raise CellCacheInputError(f"image {image_id!r}: {len(cell_records)} cell records for {n} crops")
    cell_ids = cell_records["cell_id"].to_numpy()
    if (cell_ids <= 0).any() or (np.diff(cell_ids) <= 0).any():
        raise CellCacheInputError(
            f"image {image_id!r}: cell ids must be positive and strictly increasing, got {cell_ids.tolist()[:20]}"
        )
    qc = cell_records["qc_flags"].to_numpy()
    if (qc < 0).any() or (qc > MAX_QC_FLAGS).any():
        raise CellCacheInputError(
            f"image {image_id!r}: qc_flags must fit a uint16, got range {qc.min()}..{qc.max()}"
        )
    return cell_ids, qc


def _checked_label_masks(
    image_id: str, cells_hw: np.ndarray, nuclei_hw: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The H,W cell and nucleus label masks as uint16, checked to be integer, in range and of one shape."""
    label_masks = []
    for name, mask_hw in (("cells_hw", cells_hw), ("nuclei_hw", nuclei_hw)):
        mask_hw = np.asarray(mask_hw)
        if mask_hw.ndim != 2 or not np.issubdtype(mask_hw.dtype, np.integer):
            raise CellCacheInputError(
                f"image {image_id!r}: {name} must be an H,W integer label mask; got {mask_hw.dtype} {mask_hw.shape}"
            )
        if mask_hw.size and (int(mask_hw.min()) < 0 or int(mask_hw.max()) > MAX_LABEL_ID):
            raise CellCacheInputError(f"image {image_id!r}: {name} labels must be within 0..{MAX_LABEL_ID}")
        label_masks.append(mask_hw.astype(np.uint16))
    if label_masks[0].shape != label_masks[1].shape:
        raise CellCacheInputError(
            f"image {image_id!r}: cells_hw {label_masks[0].shape} and nuclei_hw {label_masks[1].shape} differ in shape"
        )
    return label_masks[0], label_masks[1]


def _checked_image(image_id: str, image_chw: np.ndarray, hw: tuple[int, ...]) -> np.ndarray:
    """The 4,H,W uint8 field, H,W being the label masks' shape `hw`."""
    image_chw = np.asarray(image_chw)
    if image_chw.dtype != np.uint8 or image_chw.shape != (NUM_CHANNELS, *hw):
        raise CellCacheInputError(
            f"image {image_id!r}: image_chw must be {NUM_CHANNELS},H,W uint8 with H,W of cells_hw "
            f"{hw}; got {image_chw.dtype} {image_chw.shape}"
        )
    return image_chw


def _checked_labels(image_id: str, labels: np.ndarray | None) -> np.ndarray | None:
    """A 28-long 0/1 multi-hot vector as uint8, or None for unlabelled data."""
    if labels is None:
        return None
    labels_arr = np.asarray(labels)
    if labels_arr.shape != (NUM_CLASSES,) or not np.isin(labels_arr, (0, 1)).all():
        raise CellCacheInputError(
            f"image {image_id!r}: labels must be a {NUM_CLASSES}-long 0/1 multi-hot vector, got {labels_arr!r}"
        )
    return labels_arr.astype(np.uint8)


def _cell_columns(records: pd.DataFrame, cell_ids: np.ndarray, qc: np.ndarray) -> dict[str, np.ndarray]:
    """The per-cell columns of `cells/` (but image_index and image_id) in their stored dtypes."""
    return {
        "cell_id": cell_ids.astype(np.int32),
        "bbox": records[["bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1"]].to_numpy(dtype=np.int32),
        "centroid": records[["centroid_y", "centroid_x"]].to_numpy(dtype=np.float32),
        "area": records["area"].to_numpy(dtype=np.int32),
        "nucleus_area": records["nucleus_area"].to_numpy(dtype=np.int32),
        "scale": records["scale"].to_numpy(dtype=np.float32),
        "qc_flags": qc.astype(np.uint16),
    }
