"""The percentile normaliser: one channel rescaled so that two of its own percentiles become 0 and 1 (the one home).

HPA fields differ widely in brightness, so the segmenters look at channels rescaled between robust low/high
percentiles rather than at raw intensities. Every such rescaling in the project is `normalise_percentile`;
its callers differ only in the settings they pass:

| caller | percentiles | clip to [0, 1] | flat below | precision |
|---|---|---|---|---|
| watershed segmenter (`segmentation.preprocessing.normalize_channel`) | 1, 99.8 | yes | 0 | float64 |
| Cellpose networks, training and inference (`segmentation.cellpose_segmenter.normalize_percentile`) | 1, 99 | no (Cellpose's `normalize99`) | 1e-3 | float32 |

The channel is first converted to float32 and its percentiles taken with numpy's default (linear)
interpolation. A channel whose high and low percentiles lie less than `min_range` apart (or not at all
apart, e.g. an empty channel) becomes all zeros rather than noise divided by almost nothing.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

__all__ = ["PRECISIONS", "Precision", "normalise_percentile"]

Precision = Literal["float32", "float64"]
PRECISIONS: tuple[str, ...] = ("float32", "float64")


def normalise_percentile(
    channel: np.ndarray,
    low_percentile: float = 1.0,
    high_percentile: float = 99.8,
    *,
    clip: bool = True,
    min_range: float = 0.0,
    precision: Precision = "float64",
) -> np.ndarray:
    """`H,W` copy of one channel with its `low_percentile` mapped to 0 and its `high_percentile` to 1.

    clip: clip the result to [0, 1] (otherwise values below/above the percentiles fall outside it).
    min_range: the channel counts as flat, and becomes zeros, when high - low percentile < `min_range`
        (always when high <= low).
    precision: "float64" computes and returns float64 (the percentiles as numpy gives them); "float32"
        rounds the percentiles to float32 and computes and returns float32, as Cellpose does.
    """
    if channel.ndim != 2:
        raise ValueError(f"normalise_percentile expects an H,W channel, got shape {channel.shape}")
    if not 0.0 <= low_percentile < high_percentile <= 100.0:
        raise ValueError(
            f"need 0 <= low_percentile < high_percentile <= 100, got {low_percentile}, {high_percentile}"
        )
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    values = channel.astype(np.float32)
    low, high = np.percentile(values, [low_percentile, high_percentile])  # float64 numpy scalars
    if high <= low or high - low < min_range:
        return np.zeros(values.shape, dtype=np.float64 if precision == "float64" else np.float32)
    if precision == "float64":
        scaled = (values - low) / (high - low)  # numpy float64 scalars: computed in float64
    else:
        lo, hi = float(low), float(high)
        scaled = (values - lo) / (hi - lo)  # Python floats adopt the array's float32
    return np.clip(scaled, 0.0, 1.0) if clip else scaled
