"""The HPA-style colour composite of a four-channel field: how the channels are mixed into one RGB image.

Mixing (what every map and report image shows):

1. Each channel is stretched on its own between two percentiles of its pixel values, by default the
   1st and the 99.8th: ``v' = clip((v - p_low) / (p_high - p_low), 0, 1)``. Dim channels (16-bit data
   stored in a fraction of the range, weak antibody stainings) become visible without letting a few
   saturated pixels set the scale. A channel that is flat (p_high == p_low) becomes all zero.
2. The stretched channels are added, HPA's own convention: microtubules -> red, protein -> green,
   nucleus -> blue, ER -> yellow, where yellow contributes `yellow_weight` (default 0.5) to both red
   and green: ``R = red + w * yellow``, ``G = green + w * yellow``, ``B = blue``.
3. The sum is clipped to [0, 1] and returned as uint8 0-255.

The weight 0.5 keeps the ER visible as a yellow haze without drowning the protein (green) signal in
cells with a bright ER.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hpa_cells.channels import CHANNEL_STRUCTURES, CHANNELS

CHANNEL_LEGEND: tuple[tuple[str, str], ...] = tuple(zip(CHANNELS, CHANNEL_STRUCTURES, strict=True))
"""(display colour, structure) of the four channels, in channel order, for legends."""


@dataclass(frozen=True)
class CompositeSettings:
    """Percentile stretch and yellow weight of the composite (see the module docstring)."""

    low_percentile: float = 1.0
    high_percentile: float = 99.8
    yellow_weight: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.low_percentile < self.high_percentile <= 100.0:
            raise ValueError(
                f"percentiles must satisfy 0 <= low < high <= 100, got {self.low_percentile}, {self.high_percentile}"
            )
        if not 0.0 <= self.yellow_weight <= 1.0:
            raise ValueError(f"yellow_weight must lie in [0, 1], got {self.yellow_weight}")


def _integer_percentiles(plane_hw: np.ndarray, percentiles: tuple[float, float]) -> tuple[float, float]:
    """Percentiles of a uint8/uint16 plane from its histogram (linear interpolation between order statistics,
    numpy's default), much faster than sorting."""
    counts = np.bincount(plane_hw.ravel(), minlength=1)
    cumulative = np.cumsum(counts)
    n = int(cumulative[-1])
    out = []
    for q in percentiles:
        rank = q / 100.0 * (n - 1)
        lower = int(np.searchsorted(cumulative, np.floor(rank), side="right"))
        upper = int(np.searchsorted(cumulative, np.ceil(rank), side="right"))
        out.append(lower + (upper - lower) * (rank - np.floor(rank)))
    return out[0], out[1]


def stretch_channel(plane_hw: np.ndarray, low_percentile: float, high_percentile: float) -> np.ndarray:
    """`H,W` float32 in [0, 1]: one channel stretched between two of its own percentiles."""
    if plane_hw.ndim != 2:
        raise ValueError(f"stretch_channel expects an H,W plane, got shape {plane_hw.shape}")
    if plane_hw.dtype in (np.uint8, np.uint16):
        low, high = _integer_percentiles(plane_hw, (low_percentile, high_percentile))
        if high <= low:
            return np.zeros(plane_hw.shape, dtype=np.float32)
        levels = np.arange(256 if plane_hw.dtype == np.uint8 else 65536, dtype=np.float32)
        lookup = np.clip((levels - np.float32(low)) / np.float32(high - low), 0.0, 1.0)
        return lookup[plane_hw]
    values = plane_hw.astype(np.float32)
    low, high = np.percentile(values, (low_percentile, high_percentile))
    if high <= low:
        return np.zeros(values.shape, dtype=np.float32)
    return np.clip((values - low) / (high - low), 0.0, 1.0)


def composite_rgb(image_chw: np.ndarray, settings: CompositeSettings | None = None) -> np.ndarray:
    """`H,W,3` uint8 RGB composite of a `4,H,W` (red, green, blue, yellow) field of any numeric dtype."""
    settings = settings or CompositeSettings()
    if image_chw.ndim != 3 or image_chw.shape[0] != 4:
        raise ValueError(f"composite_rgb expects a 4,H,W (red, green, blue, yellow) array, got {image_chw.shape}")
    red, green, blue, yellow = (
        stretch_channel(plane, settings.low_percentile, settings.high_percentile) for plane in image_chw
    )
    weight = settings.yellow_weight
    rgb = np.stack([red + weight * yellow, green + weight * yellow, blue], axis=-1)
    return (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def grey_channel(image_chw: np.ndarray, channel: int, settings: CompositeSettings | None = None) -> np.ndarray:
    """`H,W,3` uint8 grey RGB of one stretched channel (e.g. 1 = protein), the backdrop of probability panels."""
    settings = settings or CompositeSettings()
    if image_chw.ndim != 3 or not 0 <= channel < image_chw.shape[0]:
        raise ValueError(f"grey_channel: channel {channel} out of range for an array of shape {image_chw.shape}")
    plane = stretch_channel(image_chw[channel], settings.low_percentile, settings.high_percentile)
    grey = (plane * 255.0 + 0.5).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)
