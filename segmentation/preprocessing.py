"""Input checks and channel normalisation shared by the segmenters.

A field image is a `4,H,W` uint8 (or uint16) array in the project's channel order
(`hpa_cells.channels`: red = microtubules, green = protein, blue = nucleus, yellow = ER). HPA fields differ widely in
brightness, so segmenters work on channels rescaled between robust low/high percentiles
(`hpa_cells.normalisation`, the one percentile normaliser).
"""

from __future__ import annotations

import logging

import numpy as np

from hpa_cells.channels import CHANNELS, NUM_CHANNELS
from hpa_cells.normalisation import normalise_percentile

logger = logging.getLogger(__name__)

ACCEPTED_DTYPES: tuple[type, ...] = (np.uint8, np.uint16)


class FieldImageError(ValueError):
    """A field image handed to a segmenter is not a `4,H,W` uint8/uint16 array."""


def check_field_image(image: np.ndarray, where: str) -> None:
    """Raise `FieldImageError` naming `where` unless `image` is a non-empty `4,H,W` uint8/uint16 array."""
    if not isinstance(image, np.ndarray):
        raise FieldImageError(f"{where}: expected a numpy array of shape 4,H,W, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[0] != NUM_CHANNELS:
        raise FieldImageError(
            f"{where}: expected shape 4,H,W (channels {', '.join(CHANNELS)}), got {image.shape}"
        )
    if image.shape[1] < 2 or image.shape[2] < 2:
        raise FieldImageError(f"{where}: image of shape {image.shape} is too small to segment")
    if image.dtype.type not in ACCEPTED_DTYPES:
        raise FieldImageError(f"{where}: expected dtype uint8 or uint16, got {image.dtype}")


def normalize_channel(
    channel: np.ndarray, low_percentile: float = 1.0, high_percentile: float = 99.8
) -> np.ndarray:
    """`H,W` float64 copy of one channel mapped so the two percentiles become 0 and 1, clipped to [0, 1].

    The watershed segmenter's setting of `hpa_cells.normalisation.normalise_percentile`. A flat channel
    (high == low percentile, e.g. an empty channel) becomes all zeros rather than dividing by zero.
    """
    return normalise_percentile(channel, low_percentile, high_percentile, clip=True, precision="float64")
