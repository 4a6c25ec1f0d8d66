"""The four channels of an HPA field of view: their order, indexes, names and file names (the one home).

Every `4,H,W` array in the project (samples read from disk, crops in the cell cache, segmenter input)
holds the channels in this order:

| index | constant | file colour | structure |
|---|---|---|---|
| 0 | `MICROTUBULE` | red | microtubules |
| 1 | `PROTEIN` | green | the protein of interest (antibody stain) |
| 2 | `NUCLEUS` | blue | nucleus |
| 3 | `ER` | yellow | endoplasmic reticulum |

A sample on disk is the four files `{id}_{colour}.{ext}`, one grey image per channel, with `ext` one of
`IMAGE_EXTENSIONS` (compared case-insensitively).
"""

from __future__ import annotations

__all__ = [
    "CHANNELS",
    "CHANNEL_ORDER_TEXT",
    "CHANNEL_STRUCTURES",
    "ER",
    "IMAGE_EXTENSIONS",
    "MICROTUBULE",
    "NUCLEUS",
    "NUM_CHANNELS",
    "PROTEIN",
    "TIFF_EXTENSIONS",
    "channel_file_name",
]

CHANNELS: tuple[str, ...] = ("red", "green", "blue", "yellow")
"""Channel order of every sample array, by file colour: microtubules, protein, nucleus, endoplasmic reticulum."""

CHANNEL_STRUCTURES: tuple[str, ...] = ("microtubules", "protein", "nucleus", "ER")
"""What each channel of `CHANNELS` shows, in the same order."""

MICROTUBULE, PROTEIN, NUCLEUS, ER = 0, 1, 2, 3
"""Indexes of the channels in a `4,H,W` array."""

NUM_CHANNELS = len(CHANNELS)

CHANNEL_ORDER_TEXT = ",".join(CHANNELS)
"""`"red,green,blue,yellow"`: the order as one string (the cell cache's `channel_order` attribute)."""

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
"""File extensions recognised as channel images (compared case-insensitively)."""

TIFF_EXTENSIONS: tuple[str, ...] = (".tif", ".tiff")
"""The extensions of `IMAGE_EXTENSIONS` read and written with tifffile rather than OpenCV."""


def channel_file_name(sample_id: str, channel: str, extension: str = ".png") -> str:
    """`{sample_id}_{channel}{extension}`, the file name of one channel of a sample (e.g. `X_red.png`)."""
    if channel not in CHANNELS:
        raise ValueError(f"unknown channel {channel!r}; expected one of {CHANNELS}")
    return f"{sample_id}_{channel}{extension}"
