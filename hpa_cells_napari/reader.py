"""The npe2 reader: `get_reader(path)` returns a function that opens `path` as layer data, or None when `path` is
none of: a prediction folder, a maps folder written inside one (or one image's maps folder), a channel file
`{id}_{red,green,blue,yellow}.*` of a complete field (which opens that field's four channels). A list of paths is
opened only when it is one such path. napari is not imported here: the layers are plain layer-data tuples."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from hpa_cells_napari.field_layers import (
    LayerData,
    channel_files_of,
    field_layers,
    locate,
    read_channel_files,
    read_prediction_field,
)

ReaderFunction = Callable[[str | Sequence[str]], list[LayerData]]


def _single(path: str | os.PathLike[str] | Sequence[str]) -> str | None:
    if isinstance(path, (list, tuple)):
        return str(path[0]) if len(path) == 1 else None
    return str(path)


def get_reader(path: str | os.PathLike[str] | Sequence[str]) -> ReaderFunction | None:
    """The reader for `path`, or None when this plugin does not open it (napari then asks other readers)."""
    single = _single(path)
    if single is None:
        return None
    if locate(single) is not None or channel_files_of(single) is not None:
        return read_layers
    return None


def read_layers(path: str | os.PathLike[str] | Sequence[str]) -> list[LayerData]:
    """The layers of `path` (see the module docstring): the four channels, then the cells and nuclei."""
    single = _single(path)
    if single is None:
        raise ValueError("open one prediction folder, maps folder or channel file at a time")
    located = locate(single)
    if located is not None:
        folder, image_id = located
        return field_layers(read_prediction_field(folder, image_id))
    return field_layers(read_channel_files(single))
