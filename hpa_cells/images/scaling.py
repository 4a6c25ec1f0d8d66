"""Intensity scaling of a grey plane to uint8 / float32 and resizing of images and label masks.

The scalings (``full_range``, ``per_image_max``) and output dtypes are described in `hpa_cells.images`.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np

__all__ = [
    "AUTO_WORKING_SIZE_RULE",
    "FULL_RESOLUTION_SHRINK",
    "OUTPUT_DTYPES",
    "SMALL_FIELD_MAX_SIDE",
    "SMALL_FIELD_WORKING_SIZE",
    "SCALINGS",
    "OutputDtype",
    "Scaling",
    "auto_working_size",
    "resize_image",
    "resize_mask",
    "scale_intensity",
    "working_shape",
]

Scaling = Literal["full_range", "per_image_max"]
OutputDtype = Literal["uint8", "float32"]
SCALINGS: tuple[str, ...] = ("full_range", "per_image_max")
OUTPUT_DTYPES: tuple[str, ...] = ("uint8", "float32")


def _full_range(dtype: np.dtype) -> float:
    if dtype == np.uint8:
        return 255.0
    if dtype == np.uint16:
        return 65535.0
    return 1.0


def scale_intensity(
    plane_hw: np.ndarray,
    scaling: Scaling = "full_range",
    dtype: OutputDtype = "uint8",
    peak: float | None = None,
) -> np.ndarray:
    """Map a grey plane (uint8, uint16 or float in [0, 1]) to uint8 or float32 [0, 1]; see `hpa_cells.images`.

    `peak` is the value that maps to the top of the output range under ``per_image_max`` (default:
    the plane's own maximum; `read_sample_files` passes the full-resolution maximum). uint8 output is
    rounded to nearest (in integer arithmetic for integer input) and clipped, so nothing overflows.
    """
    if scaling not in SCALINGS:
        raise ValueError(f"scaling must be one of {SCALINGS}, got {scaling!r}")
    if dtype not in OUTPUT_DTYPES:
        raise ValueError(f"dtype must be one of {OUTPUT_DTYPES}, got {dtype!r}")
    if scaling == "full_range":
        divisor = _full_range(plane_hw.dtype)
    else:
        divisor = float(plane_hw.max()) if peak is None else float(peak)
        if divisor <= 0:
            return np.zeros(plane_hw.shape, dtype=np.uint8 if dtype == "uint8" else np.float32)

    if dtype == "float32":
        scaled = plane_hw.astype(np.float32)
        scaled /= np.float32(divisor)
        return np.clip(scaled, 0.0, 1.0, out=scaled)

    if plane_hw.dtype == np.uint8 and divisor == 255.0:
        return plane_hw  # 8-bit full range: nothing to do, no copy
    if plane_hw.dtype in (np.uint8, np.uint16):
        if divisor == 65535.0:
            # round(v / 257) exactly: 257 is odd, so v / 257 is never a tie.
            return ((plane_hw.astype(np.uint32) + 128) // 257).astype(np.uint8)
        top = max(1, round(divisor))
        scaled = (plane_hw.astype(np.uint32) * 255 + top // 2) // top
        return np.minimum(scaled, 255).astype(np.uint8)
    return np.rint(np.clip(plane_hw.astype(np.float32) * np.float32(255.0 / divisor), 0, 255)).astype(
        np.uint8
    )


def working_shape(height: int, width: int, size: int | tuple[int, int]) -> tuple[int, int]:
    """Target (H, W): an int `size` is the longer side (aspect kept, each side >= 1); a tuple is (H, W) exactly."""
    if isinstance(size, tuple):
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"size must be a positive int or an (H, W) pair of positive ints, got {size!r}")
        return int(size[0]), int(size[1])
    if int(size) < 1:
        raise ValueError(f"size must be a positive int (the longer side), got {size!r}")
    longer = max(height, width)
    if height >= width:
        return int(size), max(1, round(width * size / longer))
    return max(1, round(height * size / longer)), int(size)


SMALL_FIELD_MAX_SIDE = 1024
"""Fields whose longer side is at most this are taken as whole HPA fields already shrunk (the 2018 Kaggle 512 px)."""
SMALL_FIELD_WORKING_SIZE = 512
"""The working size (longer side) of such fields: a 2048 px field of view at the reference scale."""
FULL_RESOLUTION_SHRINK = 4
"""Larger fields are at the microscope's full resolution (2021 data, website downloads) and are shrunk this much."""
AUTO_WORKING_SIZE_RULE = (
    f"fields up to {SMALL_FIELD_MAX_SIDE} px: longer side {SMALL_FIELD_WORKING_SIZE} px; larger (full-resolution) "
    f"fields: longer side / {FULL_RESOLUTION_SHRINK}"
)
"""The `auto_working_size` rule in words (printed by segment.py and recorded in a cache's provenance)."""


def auto_working_size(height: int, width: int) -> int:
    """The working size (longer side) that gives cells about the same pixel size in every HPA layout.

    The reference is a 2048 px field shrunk 4x to 512 px (the 2018 Kaggle layout), where cells are about 80 px
    across. Fields up to `SMALL_FIELD_MAX_SIDE` px are taken as whole fields of view already shrunk and go to
    512 px (so 512 px fields stay as they are); larger fields are at full resolution, at the same pixel size
    whatever their side, and are shrunk 4x: 2048 -> 512, 3072 -> 768, 1728 -> 432.
    """
    longer = max(int(height), int(width))
    if longer < 1:
        raise ValueError(f"a field must have a positive size, got {height}x{width}")
    if longer <= SMALL_FIELD_MAX_SIDE:
        return SMALL_FIELD_WORKING_SIZE
    return max(1, round(longer / FULL_RESOLUTION_SHRINK))


def resize_image(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize an `H,W` or `C,H,W` image with area interpolation (cv2.INTER_AREA); dtype is kept.

    `size` is the longer side (aspect kept) or an exact (H, W). Returns the input itself when the
    shape is already right.
    """
    if image.ndim not in (2, 3):
        raise ValueError(f"resize_image expects H,W or C,H,W, got shape {image.shape}")
    height, width = image.shape[-2:]
    target_h, target_w = working_shape(height, width, size)
    if (target_h, target_w) == (height, width):
        return image
    if image.ndim == 2:
        return cv2.resize(image, (target_w, target_h), interpolation=cv2.INTER_AREA)
    out = np.empty((image.shape[0], target_h, target_w), dtype=image.dtype)
    for index, plane in enumerate(image):
        out[index] = cv2.resize(plane, (target_w, target_h), interpolation=cv2.INTER_AREA)
    return out


def resize_mask(mask_hw: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize an `H,W` label mask by nearest neighbour; ids and dtype are kept exactly (any dtype, uint32 too).

    Done by index sampling at pixel centres in numpy rather than cv2.resize, which has no uint32.
    The result's labels are the input's labels or a subset (small objects can vanish when shrinking).
    """
    if mask_hw.ndim != 2:
        raise ValueError(f"resize_mask expects an H,W label mask, got shape {mask_hw.shape}")
    height, width = mask_hw.shape
    target_h, target_w = working_shape(height, width, size)
    if (target_h, target_w) == (height, width):
        return mask_hw
    rows = np.minimum(((np.arange(target_h) + 0.5) * (height / target_h)).astype(np.intp), height - 1)
    cols = np.minimum(((np.arange(target_w) + 0.5) * (width / target_w)).astype(np.intp), width - 1)
    return mask_hw[rows[:, None], cols[None, :]]
