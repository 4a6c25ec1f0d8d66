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

The layouts users bring all read with no conversion: the 2018 Kaggle folder (512 px 8-bit PNG), the 2021
folder (8- or 16-bit PNG, 2048/3072 px) and HPA website downloads (`{plate}_{well}_{field}_{colour}.jpg`, each
channel an RGB JPEG in its display colour: the colour's plane is taken, yellow as the mean of red and green;
composites such as `_blue_red_green.jpg` are ignored). `auto_working_size` picks a working size per field so
cells have about the same pixel size in all of them.

The package, by job: `errors` (the exception classes), `discovery` (which files make up which sample),
`decoding` (one file -> one plane or label mask), `scaling` (intensity scaling, resizing), `reading` (a sample
-> one `4,H,W` array), `writing` (samples and label masks to disk). Everything public is importable from
`hpa_cells.images` itself. The channel order and file extensions live in `hpa_cells.channels`.
"""

from __future__ import annotations

from hpa_cells.channels import CHANNELS, IMAGE_EXTENSIONS, TIFF_EXTENSIONS
from hpa_cells.images.decoding import (
    DISPLAY_PLANES,
    display_colour_plane,
    read_greyscale,
    read_label_mask,
    read_raw,
    to_greyscale,
)
from hpa_cells.images.discovery import (
    FolderScan,
    files_fingerprint,
    find_sample_files,
    parse_channel_filename,
    scan_folder,
)
from hpa_cells.images.errors import (
    ChannelShapeError,
    DuplicateChannelError,
    ImageReadError,
    LabelMaskError,
    LabelMaskReadError,
    MissingChannelError,
    NotGreyscaleError,
    UnreadableImageError,
)
from hpa_cells.images.reading import DIM_16_BIT_MAX, DimDataHook, read_sample, read_sample_files
from hpa_cells.images.scaling import (
    AUTO_WORKING_SIZE_RULE,
    FULL_RESOLUTION_SHRINK,
    OUTPUT_DTYPES,
    SCALINGS,
    SMALL_FIELD_MAX_SIDE,
    SMALL_FIELD_WORKING_SIZE,
    OutputDtype,
    Scaling,
    auto_working_size,
    resize_image,
    resize_mask,
    scale_intensity,
    working_shape,
)
from hpa_cells.images.writing import MAX_PNG_LABEL, PNG_COMPRESSION_LEVEL, write_label_mask, write_sample

__all__ = [
    "AUTO_WORKING_SIZE_RULE",
    "CHANNELS",
    "DIM_16_BIT_MAX",
    "DISPLAY_PLANES",
    "FULL_RESOLUTION_SHRINK",
    "IMAGE_EXTENSIONS",
    "MAX_PNG_LABEL",
    "OUTPUT_DTYPES",
    "PNG_COMPRESSION_LEVEL",
    "SCALINGS",
    "SMALL_FIELD_MAX_SIDE",
    "SMALL_FIELD_WORKING_SIZE",
    "TIFF_EXTENSIONS",
    "ChannelShapeError",
    "DimDataHook",
    "DuplicateChannelError",
    "FolderScan",
    "ImageReadError",
    "LabelMaskError",
    "LabelMaskReadError",
    "MissingChannelError",
    "NotGreyscaleError",
    "OutputDtype",
    "Scaling",
    "UnreadableImageError",
    "auto_working_size",
    "display_colour_plane",
    "files_fingerprint",
    "find_sample_files",
    "parse_channel_filename",
    "read_greyscale",
    "read_label_mask",
    "read_raw",
    "read_sample",
    "read_sample_files",
    "resize_image",
    "resize_mask",
    "scale_intensity",
    "scan_folder",
    "to_greyscale",
    "working_shape",
    "write_label_mask",
    "write_sample",
]
