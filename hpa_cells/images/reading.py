"""Reading a sample: its four channel files -> one `4,H,W` array in `CHANNELS` order, resized and scaled."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from hpa_cells.channels import CHANNELS
from hpa_cells.images.decoding import read_greyscale
from hpa_cells.images.discovery import find_sample_files, missing_channel_error, parse_channel_filename
from hpa_cells.images.errors import ChannelShapeError
from hpa_cells.images.scaling import (
    OUTPUT_DTYPES,
    SCALINGS,
    OutputDtype,
    Scaling,
    resize_image,
    scale_intensity,
    working_shape,
)

__all__ = ["DIM_16_BIT_MAX", "DimDataHook", "read_sample", "read_sample_files"]

logger = logging.getLogger(__name__)

DIM_16_BIT_MAX = 4095
"""A 16-bit channel whose maximum is at most this holds 12-bit (or dimmer) camera data: under ``full_range`` its
values end up in 0-16 of 255, so `read_sample_files` reports it (``per_image_max`` is the scaling meant for it)."""

DimDataHook = Callable[[str, Path, int], None]
"""Called as hook(sample id, channel file, its maximum) for a dim 16-bit channel read with ``full_range``."""


def read_sample_files(
    paths: Mapping[str, Path],
    *,
    sample_id: str | None = None,
    size: int | tuple[int, int] | None = None,
    scaling: Scaling = "full_range",
    dtype: OutputDtype = "uint8",
    on_dim_data: DimDataHook | None = None,
) -> np.ndarray:
    """Read a sample from its four channel files (channel -> path) as a `4,H,W` array in `CHANNELS` order.

    `size` resizes to a working size (int = longer side, aspect kept; or exact (H, W)) with area
    interpolation; `scaling` and `dtype` are described in `hpa_cells.images`. A colour file is read as the
    plane(s) of its channel's display colour (`to_greyscale`, HPA website downloads). An all-zero channel
    is logged as a warning naming the file. A 16-bit channel with maximum <= `DIM_16_BIT_MAX` read with
    ``full_range`` calls `on_dim_data` (default: a debug log line; `segment.py` warns once per run). Raises `MissingChannelError`, `UnreadableImageError`,
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
        raise missing_channel_error(None, sample_id, missing)

    planes = {channel: read_greyscale(Path(paths[channel]), channel) for channel in CHANNELS}
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
        elif plane.dtype == np.uint16 and scaling == "full_range" and peak <= DIM_16_BIT_MAX:
            if on_dim_data is not None:
                on_dim_data(sample_id, Path(paths[channel]), int(peak))
            else:
                logger.debug("sample %s: 16-bit channel '%s' peaks at %d", sample_id, channel, int(peak))
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
