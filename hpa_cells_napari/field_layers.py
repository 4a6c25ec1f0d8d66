"""One field as napari layer data (`(data, kwargs, layer_type)` tuples), built without importing napari.

Sources, all read through their one reader: a prediction folder (`hpa_cells.predictions.read_prediction_folder`,
opened with its cell cache by `hpa_cells.maps.PredictionRun`, which reads the cache through
`hpa_cells.cache.CellCache`), or one field's four channel files (`hpa_cells.images`).

Geometry: the channels are shown at the field's original resolution, read from the input files recorded in the
cache when they are still there; otherwise the cache's stored working-size pixels (schema 2, `full_image`) are
shown scaled up to the original size. The cell and nucleus masks live at the working size and are scaled up the
same way (`scale` = original / working, `translate` puts each working pixel's centre on the centre of the block
of original pixels it covers), so every layer lines up in the original field's pixel coordinates.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hpa_cells.channels import CHANNEL_STRUCTURES, CHANNELS
from hpa_cells.classes import CLASS_COLOURS, CLASS_NAMES
from hpa_cells.images import ImageReadError, find_sample_files, parse_channel_filename, read_sample_files
from hpa_cells.maps import PredictionRun
from hpa_cells.maps.writer import MAPS_INDEX
from hpa_cells.predictions.records import CELLS_FILE, MANIFEST_FILE

LayerData = tuple[object, dict, str]
"""napari's layer data tuple: (data, layer keyword arguments, layer type)."""

CHANNEL_COLORMAPS: dict[str, str] = {"red": "red", "green": "green", "blue": "blue", "yellow": "yellow"}
"""HPA's display colour of each channel (napari colormap names)."""
FEATURE_COLUMNS: tuple[str, ...] = ("index", *CLASS_NAMES, "top_label", "top_probability", "qc_flags",
                                    "qc_flag_names", "attention", "used_for_image")
"""The cells and nuclei layers' features table: `index` = the cell id in the masks, then cells.csv's columns."""
CELLS_LAYER = "cells"
NUCLEI_LAYER = "nuclei"
METADATA_KEY = "hpa_cells"
"""Every layer's `metadata[METADATA_KEY]`: {"prediction_folder", "image_id", "kind"} (the widgets find the field's
layers by it)."""
TRANSPARENT = (0.0, 0.0, 0.0, 0.0)


@dataclass
class FieldData:
    """One field ready for napari: channels `4,H,W` uint8 at `channel_scale`, masks `h,w` at `mask_scale`
    (None for a field without predictions), features one row per cell (`FEATURE_COLUMNS`)."""

    image_id: str
    channels: np.ndarray
    channel_scale: tuple[float, float]
    original_hw: tuple[int, int]
    prediction_folder: Path | None = None
    cells_hw: np.ndarray | None = None
    nuclei_hw: np.ndarray | None = None
    features: pd.DataFrame | None = None
    pixel_maps_path: Path | None = None

    @property
    def mask_scale(self) -> tuple[float, float]:
        assert self.cells_hw is not None
        return (self.original_hw[0] / self.cells_hw.shape[0], self.original_hw[1] / self.cells_hw.shape[1])

    def metadata(self, kind: str) -> dict:
        folder = str(self.prediction_folder) if self.prediction_folder is not None else None
        return {METADATA_KEY: {"prediction_folder": folder, "image_id": self.image_id, "kind": kind}}


def is_prediction_folder(path: Path) -> bool:
    return path.is_dir() and (path / MANIFEST_FILE).is_file() and (path / CELLS_FILE).is_file()


def locate(path: str | os.PathLike[str]) -> tuple[Path, str | None] | None:
    """(prediction folder, image id or None) that `path` opens: a prediction folder; a maps folder written inside
    one (`OUT/maps`, by `predict.py --maps`) or one image's maps folder in it (`OUT/maps/{id}`); None otherwise."""
    path = Path(path)
    if is_prediction_folder(path):
        return path, None
    if path.is_dir() and (path / MAPS_INDEX).is_file() and is_prediction_folder(path.parent):
        return path.parent, None
    if path.is_dir() and (path.parent / MAPS_INDEX).is_file() and is_prediction_folder(path.parent.parent):
        return path.parent.parent, path.name
    return None


def channel_files_of(path: str | os.PathLike[str]) -> tuple[str, dict[str, Path]] | None:
    """(field id, channel -> file) when `path` is one channel file `{id}_{colour}.{ext}` of a complete field."""
    path = Path(path)
    parsed = parse_channel_filename(path.name) if path.is_file() else None
    if parsed is None:
        return None
    sample_id = parsed[0]
    try:
        return sample_id, find_sample_files(path.parent, sample_id)
    except ImageReadError:
        return None


def read_channel_files(path: str | os.PathLike[str]) -> FieldData:
    """The four channels of the field one of whose channel files is `path`, at their own resolution."""
    found = channel_files_of(path)
    if found is None:
        raise ValueError(f"{path} is not a channel file {{id}}_{{red,green,blue,yellow}}.* of a complete field")
    sample_id, files = found
    channels = read_sample_files(files, sample_id=sample_id)
    return FieldData(sample_id, channels, (1.0, 1.0), (int(channels.shape[1]), int(channels.shape[2])))


def _original_channels(run: PredictionRun, image_id: str, original_hw: tuple[int, int]) -> np.ndarray | None:
    """The field's channels read from its input files at the original size, or None when they cannot be had (the
    files moved, or hold another size than the cache recorded)."""
    if not run.images_dir.is_dir():
        return None
    scaling = run.provenance["parameters"].get("scaling", "full_range")
    try:
        channels = read_sample_files(find_sample_files(run.images_dir, image_id), sample_id=image_id,
                                     scaling=scaling)
    except (ImageReadError, OSError, ValueError):
        return None
    return channels if channels.shape[1:] == tuple(original_hw) else None


def cell_features(cells: pd.DataFrame) -> pd.DataFrame:
    """The features table of one field's cells (cells.csv rows): `FEATURE_COLUMNS`, `index` = cell id."""
    table = cells.rename(columns={"cell_id": "index"})
    features = table[[c for c in FEATURE_COLUMNS if c in table.columns]].reset_index(drop=True)
    features["index"] = features["index"].astype(np.int64)
    return features


def read_prediction_field(folder: str | os.PathLike[str], image_id: str | None = None) -> FieldData:
    """One field of a prediction folder (its first image when `image_id` is None), with masks and features."""
    with PredictionRun(folder) as run:
        image_id = image_id if image_id is not None else run.image_ids[0]
        view = run.field(image_id)
        original_hw = tuple(int(v) for v in view.original_hw)
        channels = _original_channels(run, image_id, original_hw)
        if channels is None:
            channels = view.image_chw
        scale = (original_hw[0] / channels.shape[1], original_hw[1] / channels.shape[2])
        return FieldData(image_id, channels, scale, original_hw, run.pred_dir, view.cells_hw, view.nuclei_hw,
                         cell_features(view.cells), run.folder.pixel_maps_path)


def _translate(scale: tuple[float, float]) -> tuple[float, float]:
    """The offset putting a scaled pixel's centre on the centre of the original pixels it covers."""
    return ((scale[0] - 1) / 2, (scale[1] - 1) / 2)


def channel_layers(field: FieldData) -> list[LayerData]:
    """The four channels as additive image layers in HPA's colours."""
    layers = []
    for plane, channel, structure in zip(field.channels, CHANNELS, CHANNEL_STRUCTURES, strict=True):
        layers.append((plane, {
            "name": f"{field.image_id} {channel} ({structure})", "colormap": CHANNEL_COLORMAPS[channel],
            "blending": "additive", "contrast_limits": (0, 255), "scale": field.channel_scale,
            "translate": _translate(field.channel_scale), "metadata": field.metadata(f"channel:{channel}"),
        }, "image"))
    return layers


def hex_rgba(colour: str, alpha: float = 1.0) -> tuple[float, float, float, float]:
    text = colour.lstrip("#")
    return (int(text[0:2], 16) / 255, int(text[2:4], 16) / 255, int(text[4:6], 16) / 255, float(alpha))


def top_label_colours(features: pd.DataFrame) -> dict:
    """label -> RGBA: each cell in its top class's colour (`hpa_cells.classes.CLASS_COLOURS`)."""
    colours: dict = {None: TRANSPARENT, 0: TRANSPARENT}
    for cell_id, class_name in zip(features["index"], features["top_label"], strict=True):
        colours[int(cell_id)] = hex_rgba(CLASS_COLOURS[CLASS_NAMES.index(class_name)])
    return colours


def label_layers(field: FieldData) -> list[LayerData]:
    """The cells and nuclei as Labels layers (cells coloured by top class), both with the features table."""
    if field.cells_hw is None or field.features is None:
        return []
    common = {"scale": field.mask_scale, "translate": _translate(field.mask_scale)}
    cells = (field.cells_hw, {**common, "name": CELLS_LAYER, "features": field.features.copy(), "opacity": 0.5,
                              "colormap": top_label_colours(field.features), "metadata": field.metadata("cells")},
             "labels")
    nuclei = (field.nuclei_hw, {**common, "name": NUCLEI_LAYER, "features": field.features.copy(), "opacity": 0.4,
                                "visible": False, "metadata": field.metadata("nuclei")}, "labels")
    return [cells, nuclei]


def field_layers(field: FieldData) -> list[LayerData]:
    """Every layer of a field: the four channels, then the cells and nuclei (when predicted)."""
    return [*channel_layers(field), *label_layers(field)]


def cell_value_image(cells_hw: np.ndarray, features: pd.DataFrame, column: str) -> np.ndarray:
    """`h,w` float32: each cell's `column` value painted over its pixels, 0 outside the cells."""
    ids = features["index"].to_numpy(dtype=np.int64)
    lookup = np.zeros(max(int(cells_hw.max()), int(ids.max(initial=0))) + 1, dtype=np.float32)
    lookup[ids] = features[column].to_numpy(dtype=np.float32)
    return lookup[cells_hw]


def probability_layer(field: FieldData, class_id: int) -> LayerData:
    """One class's cell probabilities as an image layer (the on-demand layer of the class widget)."""
    assert field.cells_hw is not None and field.features is not None
    name = CLASS_NAMES[class_id]
    return (cell_value_image(field.cells_hw, field.features, name), {
        "name": f"p({name})", "colormap": "viridis", "contrast_limits": (0.0, 1.0), "blending": "additive",
        "scale": field.mask_scale, "translate": _translate(field.mask_scale),
        "metadata": field.metadata(f"probability:{class_id}")}, "image")


def pixel_map_layer(field: FieldData, class_id: int) -> LayerData | None:
    """A dense model's per-pixel probability map of one class (None when the folder has no pixel maps)."""
    if field.pixel_maps_path is None or field.cells_hw is None:
        return None
    from hpa_cells.pixel_maps import PixelMaps

    maps = PixelMaps(field.pixel_maps_path)
    try:
        plane = maps.read(field.image_id, tuple(field.cells_hw.shape))[class_id]
    finally:
        maps.close()
    plane = plane * np.isin(field.cells_hw, field.features["index"].to_numpy())
    name = CLASS_NAMES[class_id]
    return (plane.astype(np.float32) / 255, {
        "name": f"pixel map {name}", "colormap": "inferno", "contrast_limits": (0.0, 1.0), "blending": "additive",
        "scale": field.mask_scale, "translate": _translate(field.mask_scale),
        "metadata": field.metadata(f"pixel_map:{class_id}")}, "image")
