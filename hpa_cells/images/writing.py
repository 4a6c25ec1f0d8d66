"""Writing HPA samples (one grey file per channel) and 16-bit PNG label masks (used by the synthetic generator and tests)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import tifffile

from hpa_cells.channels import CHANNELS, IMAGE_EXTENSIONS, TIFF_EXTENSIONS, channel_file_name
from hpa_cells.images.errors import LabelMaskError

__all__ = ["MAX_PNG_LABEL", "PNG_COMPRESSION_LEVEL", "write_label_mask", "write_sample"]

PNG_COMPRESSION_LEVEL = 1
"""zlib level for PNGs we write: 1 is several times faster than cv2's default 3 for ~10% larger files."""

MAX_PNG_LABEL = 65535


def _normalise_extension(ext: str) -> str:
    """'png', '.PNG' -> '.png'; refuse anything not in IMAGE_EXTENSIONS."""
    suffix = "." + ext.lower().lstrip(".")
    if suffix not in IMAGE_EXTENSIONS:
        raise ValueError(f"unsupported image extension {ext!r}; use one of {', '.join(IMAGE_EXTENSIONS)}")
    return suffix


def _write_plane(path: Path, plane_hw: np.ndarray) -> None:
    """Write one 2-D uint8/uint16 plane; PNG/JPEG through cv2.imencode (so any path works), TIFF via tifffile."""
    suffix = path.suffix.lower()
    if suffix in TIFF_EXTENSIONS:
        tifffile.imwrite(path, plane_hw)
        return
    params = [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION_LEVEL] if suffix == ".png" else []
    ok, encoded = cv2.imencode(suffix, plane_hw, params)
    if not ok:
        raise OSError(f"cv2 could not encode {path} (shape {plane_hw.shape}, dtype {plane_hw.dtype})")
    path.write_bytes(encoded.tobytes())


def write_sample(folder: Path, sample_id: str, image_chw: np.ndarray, ext: str = "png") -> dict[str, Path]:
    """Write a `4,H,W` uint8 or uint16 sample as `{folder}/{sample_id}_{channel}.{ext}`, one grey file per channel.

    PNG (lossless, 8 or 16 bit, fast low compression) and TIFF (uncompressed) keep values exactly;
    JPEG is lossy and 8-bit only. Creates `folder` if needed. Returns channel -> written path.
    """
    image_chw = np.asarray(image_chw)
    if image_chw.ndim != 3 or image_chw.shape[0] != len(CHANNELS):
        raise ValueError(
            f"sample {sample_id}: expected a 4,H,W array (red, green, blue, yellow), got shape {image_chw.shape}"
        )
    if image_chw.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"sample {sample_id}: expected dtype uint8 or uint16, got {image_chw.dtype}")
    if not sample_id or "/" in sample_id or "\\" in sample_id:
        raise ValueError(f"invalid sample id {sample_id!r}: must be non-empty and contain no path separator")
    suffix = _normalise_extension(ext)
    if suffix in (".jpg", ".jpeg") and image_chw.dtype != np.uint8:
        raise ValueError(f"sample {sample_id}: JPEG holds 8-bit data only, got {image_chw.dtype}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for channel, plane in zip(CHANNELS, image_chw, strict=True):
        path = folder / channel_file_name(sample_id, channel, suffix)
        _write_plane(path, np.ascontiguousarray(plane))
        paths[channel] = path
    return paths


def write_label_mask(path: Path, mask_hw: np.ndarray) -> None:
    """Write an `H,W` instance mask (0 = background, 1..N = objects) as a 16-bit PNG.

    Raises `LabelMaskError` for anything that would not survive the round trip: not 2-D, not an
    integer/bool array, negative ids, or ids above 65535.
    """
    path = Path(path)
    mask_hw = np.asarray(mask_hw)
    if path.suffix.lower() != ".png":
        raise LabelMaskError(f"{path}: label masks are written as PNG; give a path ending in .png")
    if mask_hw.ndim != 2:
        raise LabelMaskError(f"{path}: a label mask must be H,W, got shape {mask_hw.shape}")
    if mask_hw.dtype != np.bool_ and not np.issubdtype(mask_hw.dtype, np.integer):
        raise LabelMaskError(f"{path}: a label mask must hold integer ids, got dtype {mask_hw.dtype}")
    if mask_hw.size:
        low, high = int(mask_hw.min()), int(mask_hw.max())
        if low < 0:
            raise LabelMaskError(f"{path}: label ids must be >= 0, found {low}")
        if high > MAX_PNG_LABEL:
            raise LabelMaskError(
                f"{path}: label id {high} exceeds {MAX_PNG_LABEL}, the largest a 16-bit PNG can hold"
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_plane(path, np.ascontiguousarray(mask_hw, dtype=np.uint16))
