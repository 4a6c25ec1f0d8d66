"""The errors raised while reading and writing HPA samples and label masks (all named after the file concerned)."""

from __future__ import annotations

__all__ = [
    "ChannelShapeError",
    "DuplicateChannelError",
    "ImageReadError",
    "LabelMaskError",
    "LabelMaskReadError",
    "MissingChannelError",
    "NotGreyscaleError",
    "UnreadableImageError",
]


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
