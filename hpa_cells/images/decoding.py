"""Decoding single image files: as stored (`read_raw`), as one grey plane (`read_greyscale`), as a label mask."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import tifffile

from hpa_cells.channels import TIFF_EXTENSIONS
from hpa_cells.images.errors import LabelMaskReadError, NotGreyscaleError, UnreadableImageError

__all__ = ["DISPLAY_PLANES", "display_colour_plane", "read_greyscale", "read_label_mask", "read_raw", "to_greyscale"]

DISPLAY_PLANES: dict[str, tuple[int, ...]] = {"red": (2,), "green": (1,), "blue": (0,), "yellow": (2, 1)}
"""Channel -> the planes (indices into cv2's B, G, R order) that show it in its display colour."""


def read_raw(path: Path) -> np.ndarray:
    """Decode one image file as stored (no conversion): PNG/JPEG via cv2 IMREAD_UNCHANGED, TIFF via tifffile.

    Colour PNG/JPEG come back as cv2 gives them (`H,W,3` BGR or `H,W,4` BGRA). Raises
    `UnreadableImageError` naming the file when it cannot be read or decoded.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise UnreadableImageError(f"{path}: cannot read file ({error.strerror or error})") from error
    if not data:
        raise UnreadableImageError(f"{path}: file is empty (0 bytes)")
    if path.suffix.lower() in TIFF_EXTENSIONS:
        return _decode_tiff(path, data)
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as error:
        raise UnreadableImageError(f"{path}: cannot decode image ({error})") from error
    if image is None:
        raise UnreadableImageError(
            f"{path}: cannot decode image (corrupt, truncated or not a {path.suffix} file)"
        )
    return image


def _decode_tiff(path: Path, data: bytes) -> np.ndarray:
    """Decode the first series of a TIFF; separate-plane RGB (`S,Y,X`) is moved to `Y,X,S` like cv2's colour."""
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            series = tif.series[0]
            image = series.asarray()
            axes = series.axes
    except (tifffile.TiffFileError, ValueError, IndexError, KeyError, OSError) as error:
        raise UnreadableImageError(f"{path}: cannot decode TIFF ({error})") from error
    if image.ndim == 3 and axes == "SYX":
        image = np.moveaxis(image, 0, -1)
    return image


def _not_greyscale(path: Path | str, image: np.ndarray, reason: str = "") -> NotGreyscaleError:
    detail = f" ({reason})" if reason else ""
    return NotGreyscaleError(
        f"{path} is not greyscale-convertible: shape {image.shape}, dtype {image.dtype}{detail}"
    )


def to_greyscale(image: np.ndarray, source: Path | str = "<array>", channel: str | None = None) -> np.ndarray:
    """Reduce a decoded image to one `H,W` grey plane, keeping its dtype (uint8, uint16 or float).

    - `H,W` is grey already; `1,H,W` and `H,W,1` are squeezed.
    - `H,W,3` / `H,W,4` colour (cv2's BGR order): the alpha channel is ignored; if the colour channels are
      equal the first is taken. Otherwise, with `channel` given (one of `CHANNELS`), the plane(s) of that
      channel's display colour, as in HPA website downloads, which store each channel as an RGB JPEG in its
      own colour: red -> R, green -> G, blue -> B, yellow (red + green) -> the mean of R and G, so JPEG
      colour noise in the other planes is left out. Without `channel`, the per-pixel maximum over them
      (the signal is wherever any colour plane is bright).
    - Anything else (more dimensions, a multi-plane stack, 2-channel, bool/complex/other integer dtypes,
      float values outside [0, 1]) raises `NotGreyscaleError` naming `source`.
    """
    dtype = image.dtype
    if not (dtype in (np.uint8, np.uint16) or np.issubdtype(dtype, np.floating)):
        raise _not_greyscale(source, image, "supported dtypes are uint8, uint16 and float in [0, 1]")
    plane = image
    if np.issubdtype(dtype, np.floating) and dtype not in (np.float32, np.float64):
        plane = image.astype(np.float32)  # float16 etc.: cv2.resize handles only float32/float64
    if plane.ndim == 3 and plane.shape[0] == 1:
        plane = plane[0]
    elif plane.ndim == 3 and plane.shape[2] == 1:
        plane = plane[:, :, 0]
    elif plane.ndim == 3 and plane.shape[2] in (3, 4):
        colour = plane[:, :, :3]
        first = colour[:, :, 0]
        if np.array_equal(first, colour[:, :, 1]) and np.array_equal(first, colour[:, :, 2]):
            plane = first
        elif channel is not None:
            plane = display_colour_plane(colour, channel)
        else:
            plane = np.maximum(np.maximum(first, colour[:, :, 1]), colour[:, :, 2])
    if plane.ndim != 2 or plane.size == 0:
        raise _not_greyscale(source, image)
    if np.issubdtype(plane.dtype, np.floating):
        low, high = float(plane.min()), float(plane.max())
        if not (low >= 0.0 and high <= 1.0):  # also catches NaN
            raise _not_greyscale(
                source, image, f"float values must lie in [0, 1], found min {low}, max {high}"
            )
    return np.ascontiguousarray(plane)


def display_colour_plane(colour_bgr: np.ndarray, channel: str) -> np.ndarray:
    """The grey plane of `channel` in an `H,W,3` BGR image that shows it in its display colour (see
    `to_greyscale`): one colour plane, or for yellow the mean of red and green, rounded to nearest in the
    image's dtype."""
    if channel not in DISPLAY_PLANES:
        raise ValueError(f"unknown channel {channel!r}; expected one of {tuple(DISPLAY_PLANES)}")
    planes = DISPLAY_PLANES[channel]
    if len(planes) == 1:
        return colour_bgr[:, :, planes[0]]
    first, second = colour_bgr[:, :, planes[0]], colour_bgr[:, :, planes[1]]
    if np.issubdtype(colour_bgr.dtype, np.floating):
        return ((first + second) / 2).astype(colour_bgr.dtype)
    return ((first.astype(np.uint32) + second + 1) // 2).astype(colour_bgr.dtype)


def read_greyscale(path: Path, channel: str | None = None) -> np.ndarray:
    """Read one channel file as an `H,W` grey plane in its stored dtype (uint8, uint16 or float).

    `channel` (e.g. 'yellow') picks the display-colour plane(s) of a colour file, see `to_greyscale`.
    """
    return to_greyscale(read_raw(path), source=path, channel=channel)


def read_label_mask(path: Path) -> np.ndarray:
    """Read an `H,W` instance mask (0 = background, 1..N = objects) from PNG or TIFF.

    8- and 16-bit files (e.g. HPA-Cell-Segmentation's 8-bit `*_predictedmask.png`) come back as
    uint16, 32/64-bit integer TIFFs as int32. An RGB file with equal channels is accepted as grey;
    other colour, float, negative or over-int32 masks raise `LabelMaskReadError`.
    """
    path = Path(path)
    raw = read_raw(path)
    mask = raw
    if mask.ndim == 3 and mask.shape[2] in (3, 4):
        colour = mask[:, :, :3]
        if not (
            np.array_equal(colour[:, :, 0], colour[:, :, 1])
            and np.array_equal(colour[:, :, 0], colour[:, :, 2])
        ):
            raise LabelMaskReadError(
                f"{path} is not a label mask: shape {raw.shape}, dtype {raw.dtype} (colour channels differ)"
            )
        mask = colour[:, :, 0]
    elif mask.ndim == 3 and 1 in (mask.shape[0], mask.shape[2]):
        mask = mask[0] if mask.shape[0] == 1 else mask[:, :, 0]
    if mask.ndim != 2 or mask.dtype == np.bool_ or not np.issubdtype(mask.dtype, np.integer):
        raise LabelMaskReadError(f"{path} is not a label mask: shape {raw.shape}, dtype {raw.dtype}")
    if mask.dtype in (np.uint8, np.uint16):
        return np.ascontiguousarray(mask, dtype=np.uint16)
    if mask.size:
        low, high = int(mask.min()), int(mask.max())
        if low < 0 or high > np.iinfo(np.int32).max:
            raise LabelMaskReadError(
                f"{path} is not a label mask: ids must lie in 0..{np.iinfo(np.int32).max}, found {low}..{high}"
            )
    return np.ascontiguousarray(mask, dtype=np.int32)
