"""Reading and writing HPA samples: four greyscale channel files per field of view -> one `C,H,W` array.

A sample is the files `{id}_{red,green,blue,yellow}.{png,jpg,jpeg,tif,tiff}` in one folder (extensions
are case-insensitive; ids may contain underscores and hyphens, the channel is what follows the *last*
underscore). Channels are always returned in the order of `CHANNELS`.

Intensity scaling (`scaling=`), applied to each channel file on its own:

- ``"full_range"`` (default): a value is divided by its dtype's full range, 255 for 8-bit, 65535 for
  16-bit, 1.0 for float files (which must lie in [0, 1]). For uint8 output 16-bit values become
  ``round(value / 257)``, so 0 -> 0, 257 -> 1, 65535 -> 255; 8-bit files are passed through untouched.
- ``"per_image_max"``: a value is divided by the channel's own maximum (taken at full resolution), so
  the brightest pixel of every channel becomes 255 (or 1.0). Meant for dim data such as 12-bit camera
  values stored in 16-bit files (maximum 4095), which ``full_range`` would squeeze into 0-16. It
  discards the absolute brightness of a channel; an all-zero channel stays all zero.

Output dtype (`dtype=`): ``"uint8"`` (default, rounded to nearest) or ``"float32"`` in [0, 1] without
quantisation. Colour files are reduced to one grey channel, see `to_greyscale`.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import tifffile

logger = logging.getLogger(__name__)

CHANNELS: tuple[str, ...] = ("red", "green", "blue", "yellow")
"""Channel order of every sample array: microtubules, protein, nucleus, endoplasmic reticulum."""

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
"""File extensions recognised as channel images (compared case-insensitively)."""

TIFF_EXTENSIONS: tuple[str, ...] = (".tif", ".tiff")

Scaling = Literal["full_range", "per_image_max"]
OutputDtype = Literal["uint8", "float32"]
SCALINGS: tuple[str, ...] = ("full_range", "per_image_max")
OUTPUT_DTYPES: tuple[str, ...] = ("uint8", "float32")

PNG_COMPRESSION_LEVEL = 1
"""zlib level for PNGs we write: 1 is several times faster than cv2's default 3 for ~10% larger files."""

MAX_PNG_LABEL = 65535


class ImageReadError(Exception):
    """Base class: an HPA channel image, sample or label mask could not be read as expected."""


class MissingChannelError(ImageReadError):
    """A sample lacks one or more of its four channel files."""

    def __init__(self, message: str, sample_id: str, missing: tuple[str, ...]) -> None:
        super().__init__(message)
        self.sample_id = sample_id
        self.missing = missing


class DuplicateChannelError(ImageReadError):
    """One channel of a sample exists in two or more formats (e.g. `X_red.png` and `X_red.tif`)."""


class UnreadableImageError(ImageReadError):
    """A channel or mask file cannot be read or decoded (missing, no permission, empty, truncated, not an image)."""


class ChannelShapeError(ImageReadError):
    """The four channels of a sample do not all have the same height and width."""


class NotGreyscaleError(ImageReadError):
    """An image cannot be reduced to one grey channel (stack, 2-channel, complex, bool, float out of [0, 1])."""


class LabelMaskReadError(ImageReadError):
    """A file read as a label mask is not a single-channel non-negative integer image."""


class LabelMaskError(ValueError):
    """An array given to `write_label_mask` cannot be stored as a 16-bit PNG instance mask."""


# --------------------------------------------------------------------------------------------------
# Writing (used by the synthetic generator and tests)
# --------------------------------------------------------------------------------------------------


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
        path = folder / f"{sample_id}_{channel}{suffix}"
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


# --------------------------------------------------------------------------------------------------
# Decoding single files
# --------------------------------------------------------------------------------------------------


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


def to_greyscale(image: np.ndarray, source: Path | str = "<array>") -> np.ndarray:
    """Reduce a decoded image to one `H,W` grey plane, keeping its dtype (uint8, uint16 or float).

    - `H,W` is grey already; `1,H,W` and `H,W,1` are squeezed.
    - `H,W,3` / `H,W,4` colour: the alpha channel is ignored; if the colour channels are equal the
      first is taken, otherwise the per-pixel maximum over them. The maximum is right for HPAv18
      colour-coded JPEGs, which put each channel's signal in that channel's own colour (yellow as
      red + green), so the signal is wherever any colour channel is bright.
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


def read_greyscale(path: Path) -> np.ndarray:
    """Read one channel file as an `H,W` grey plane in its stored dtype (uint8, uint16 or float)."""
    return to_greyscale(read_raw(path), source=path)


# --------------------------------------------------------------------------------------------------
# Intensity scaling and resizing
# --------------------------------------------------------------------------------------------------


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
    """Map a grey plane (uint8, uint16 or float in [0, 1]) to uint8 or float32 [0, 1]; see the module docstring.

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


# --------------------------------------------------------------------------------------------------
# Finding samples
# --------------------------------------------------------------------------------------------------


def parse_channel_filename(name: str) -> tuple[str, str] | None:
    """'{id}_{channel}.{ext}' -> (id, channel); None when the name does not follow the pattern.

    The id is everything before the last underscore, so ids with underscores and hyphens work.
    Hidden files (leading '.', e.g. macOS `._X_red.png` resource forks) never match.
    """
    dot = name.rfind(".")
    if name.startswith(".") or dot <= 0 or name[dot:].lower() not in IMAGE_EXTENSIONS:
        return None
    sample_id, sep, channel = name[:dot].rpartition("_")
    if not sep or not sample_id or channel not in CHANNELS:
        return None
    return sample_id, channel


def _looked_for(sample_id: str, channel: str) -> str:
    """'X_red.png/.jpg/.jpeg/.tif/.tiff': the names a missing channel could have had."""
    return f"{sample_id}_{channel}" + "/".join(IMAGE_EXTENSIONS)


def _missing_channel_error(
    folder: Path | None, sample_id: str, missing: tuple[str, ...]
) -> MissingChannelError:
    if folder is None:
        parts = [f"missing channel '{channel}' (no path given)" for channel in missing]
    else:
        parts = [
            f"missing channel '{channel}' (looked for {_looked_for(sample_id, channel)} in {folder})"
            for channel in missing
        ]
    return MissingChannelError(f"sample {sample_id}: " + "; ".join(parts), sample_id, missing)


def _add_channel_file(found: dict[str, dict[str, Path]], sample_id: str, channel: str, path: Path) -> None:
    channels = found.setdefault(sample_id, {})
    if channel in channels:
        first, second = sorted([channels[channel], path])
        raise DuplicateChannelError(
            f"sample {sample_id}: channel '{channel}' exists in two formats: {first} and {second}; keep one"
        )
    channels[channel] = path


def _files_in(folder: Path, prefix: str = "") -> list[Path]:
    """Regular files (or links to them) directly in `folder` whose names start with `prefix`, sorted by name."""
    with os.scandir(folder) as entries:
        names = sorted(entry.name for entry in entries if entry.name.startswith(prefix) and entry.is_file())
    return [folder / name for name in names]


@dataclass(frozen=True)
class FolderScan:
    """What `scan_folder` found: complete samples, incomplete ones, and files that are not channel images.

    `complete`: sample id -> {channel: path} in `CHANNELS` order, ids sorted.
    `incomplete`: sample id -> the channels that are missing, ids sorted.
    `ignored`: files whose names do not match `{id}_{red|green|blue|yellow}.{image extension}`, sorted.
    """

    folder: Path
    complete: dict[str, dict[str, Path]]
    incomplete: dict[str, tuple[str, ...]]
    ignored: tuple[Path, ...]

    @property
    def ids(self) -> list[str]:
        """Sorted ids of the complete samples."""
        return list(self.complete)


def scan_folder(folder: Path) -> FolderScan:
    """List the samples in a flat folder of channel files (subfolders are not entered).

    Raises `FileNotFoundError` if `folder` is not a directory and `DuplicateChannelError` when one
    channel of a sample exists in two formats.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist or is not a directory")
    found: dict[str, dict[str, Path]] = {}
    ignored: list[Path] = []
    for path in _files_in(folder):
        parsed = parse_channel_filename(path.name)
        if parsed is None:
            ignored.append(path)
            continue
        _add_channel_file(found, parsed[0], parsed[1], path)
    complete: dict[str, dict[str, Path]] = {}
    incomplete: dict[str, tuple[str, ...]] = {}
    for sample_id in sorted(found):
        channels = found[sample_id]
        missing = tuple(channel for channel in CHANNELS if channel not in channels)
        if missing:
            incomplete[sample_id] = missing
        else:
            complete[sample_id] = {channel: channels[channel] for channel in CHANNELS}
    if incomplete:
        logger.info("%s: %d complete samples, %d incomplete", folder, len(complete), len(incomplete))
    return FolderScan(folder=folder, complete=complete, incomplete=incomplete, ignored=tuple(ignored))


def find_sample_files(folder: Path, sample_id: str) -> dict[str, Path]:
    """The four channel files of one sample in `folder` (channel -> path, in `CHANNELS` order).

    Lists the folder once; to read many samples from one folder, call `scan_folder` once and
    `read_sample_files` per sample instead. Raises `MissingChannelError` / `DuplicateChannelError`.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist or is not a directory")
    found: dict[str, dict[str, Path]] = {}
    prefix = f"{sample_id}_"
    for path in _files_in(folder, prefix):
        parsed = parse_channel_filename(path.name)
        if parsed is not None and parsed[0] == sample_id:
            _add_channel_file(found, sample_id, parsed[1], path)
    channels = found.get(sample_id, {})
    missing = tuple(channel for channel in CHANNELS if channel not in channels)
    if missing:
        raise _missing_channel_error(folder, sample_id, missing)
    return {channel: channels[channel] for channel in CHANNELS}


# --------------------------------------------------------------------------------------------------
# Reading samples
# --------------------------------------------------------------------------------------------------


def read_sample_files(
    paths: Mapping[str, Path],
    *,
    sample_id: str | None = None,
    size: int | tuple[int, int] | None = None,
    scaling: Scaling = "full_range",
    dtype: OutputDtype = "uint8",
) -> np.ndarray:
    """Read a sample from its four channel files (channel -> path) as a `4,H,W` array in `CHANNELS` order.

    `size` resizes to a working size (int = longer side, aspect kept; or exact (H, W)) with area
    interpolation; `scaling` and `dtype` are described in the module docstring. An all-zero channel
    is logged as a warning naming the file. Raises `MissingChannelError`, `UnreadableImageError`,
    `NotGreyscaleError` or `ChannelShapeError`, each naming the files concerned.
    """
    if scaling not in SCALINGS:
        raise ValueError(f"scaling must be one of {SCALINGS}, got {scaling!r}")
    if dtype not in OUTPUT_DTYPES:
        raise ValueError(f"dtype must be one of {OUTPUT_DTYPES}, got {dtype!r}")
    unknown = sorted(set(paths) - set(CHANNELS))
    if unknown:
        raise ValueError(f"unknown channel names {unknown}; expected {CHANNELS}")
    if sample_id is None:
        first = next(iter(paths.values()), None)
        parsed = parse_channel_filename(Path(first).name) if first is not None else None
        sample_id = parsed[0] if parsed else "<unnamed>"
    missing = tuple(channel for channel in CHANNELS if channel not in paths)
    if missing:
        raise _missing_channel_error(None, sample_id, missing)

    planes = {channel: read_greyscale(Path(paths[channel])) for channel in CHANNELS}
    shapes = {channel: plane.shape for channel, plane in planes.items()}
    if len(set(shapes.values())) > 1:
        listing = ", ".join(
            f"{channel} {shapes[channel]} ({Path(paths[channel]).name})" for channel in CHANNELS
        )
        raise ChannelShapeError(f"sample {sample_id}: channels differ in shape: {listing}")

    height, width = shapes[CHANNELS[0]]
    target_h, target_w = (height, width) if size is None else working_shape(height, width, size)
    out = np.empty((len(CHANNELS), target_h, target_w), dtype=np.uint8 if dtype == "uint8" else np.float32)
    for index, channel in enumerate(CHANNELS):
        plane = planes[channel]
        peak = plane.max()
        if peak == 0:
            logger.warning(
                "sample %s: channel '%s' is empty (all zero): %s", sample_id, channel, paths[channel]
            )
        if (target_h, target_w) != (height, width):
            plane = resize_image(plane, (target_h, target_w))
        out[index] = scale_intensity(plane, scaling=scaling, dtype=dtype, peak=float(peak))
    return out


def read_sample(
    folder: Path,
    sample_id: str,
    *,
    size: int | tuple[int, int] | None = None,
    scaling: Scaling = "full_range",
    dtype: OutputDtype = "uint8",
) -> np.ndarray:
    """Read sample `sample_id` from `folder` as a `4,H,W` array (red, green, blue, yellow).

    Convenience over `find_sample_files` + `read_sample_files`; see the latter for the options.
    """
    return read_sample_files(
        find_sample_files(folder, sample_id), sample_id=sample_id, size=size, scaling=scaling, dtype=dtype
    )


# --------------------------------------------------------------------------------------------------
# Label masks
# --------------------------------------------------------------------------------------------------


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
