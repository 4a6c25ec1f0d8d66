"""The on-disk layout of the HDF5 cell cache (schema version 2): names, dtypes, creation and appending.

This module is the single place that knows dataset names and dtypes; the reader (`hpa_cells.cache.reader`)
and the writer (`hpa_cells.cache.writer`) both go through it. A journal shard written for one image uses
exactly this layout too, so merging a shard into the main file is "append one cache to another". The
schema below is also reproduced in data/README.md; change both together.

## Cell cache schema (version 2)

One HDF5 file (HDF5 1.10 format, readable by h5py on HDF5 >= 1.10). N = number of cells,
M = number of images, K = number of skipped images, S = crop size, 28 = number of classes.
Cells are stored image by image, each image's cells in increasing cell id order, so the cells of
image i are rows `offset[i] : offset[i] + count[i]` of every per-cell dataset.

Root attributes:

| attribute | type | meaning |
|---|---|---|
| `schema_version` | int | `2`; readers also read version 1 (no `image_pixels`, see below) and refuse others with an error naming both |
| `crop_size` | int | S |
| `channel_order` | str | `"red,green,blue,yellow"` (microtubules, protein, nucleus, ER) |
| `segmenter` | str | name of the segmenter that made the label masks |
| `model_sha256` | str | sha256 of the segmentation model file, `""` if it has none |
| `parameters_json` | str | segmenter parameters, JSON with sorted keys |
| `qc_flag_names` | str | JSON object `{flag name: bit value}` for `cells/qc_flags` |
| `package_version` | str | `hpa_cells.__version__` of the run that created the file |
| `created` / `modified` | str | ISO 8601 UTC: first image written / last merge |

Datasets (every 1-D/2-D table is chunked and resizable along its first axis):

| path | shape | dtype | meaning |
|---|---|---|---|
| `crops` | N,4,S,S | uint8 | cell crops, channels in `channel_order`; chunk = one cell; gzip level 1 (default) |
| `masks` | N,S,S | uint8 | the cell's own mask in crop coordinates (0/1); chunk = one cell; same filter as `crops` |
| `cells/image_index` | N | int32 | row of the cell's image in `images/` |
| `cells/image_id` | N | utf-8 str | the cell's image id |
| `cells/cell_id` | N | int32 | the cell's label in the image's full cell mask |
| `cells/bbox` | N,4 | int32 | y0, x0, y1, x1 (end exclusive) in working-size pixels |
| `cells/centroid` | N,2 | float32 | y, x in working-size pixels |
| `cells/area` | N | int32 | cell area in working-size pixels |
| `cells/nucleus_area` | N | int32 | nucleus pixels inside the cell |
| `cells/scale` | N | float32 | crop pixels per working pixel: by default each cell's padded box is resized to fill the crop (`CropConfig.upscale`), so > 1 for cells smaller than the crop |
| `cells/qc_flags` | N | uint16 | QC bitmask, bits named by `qc_flag_names` |
| `images/id` | M | utf-8 str | image id (unique) |
| `images/offset` | M | int64 | first row of the image's cells |
| `images/count` | M | int32 | number of cells (>= 1) |
| `images/original_hw` | M,2 | int32 | field size before resizing |
| `images/working_hw` | M,2 | int32 | H, W of the full masks (the working size) |
| `images/labels` | M,28 | uint8 | image-level multi-hot labels, 2018 class ids; zeros when unlabelled |
| `images/has_labels` | M | uint8 | 1 if the image came with labels (0 for prediction-only data) |
| `images/mask_offset` | M | int64 | start of the image's segment in `image_masks/*` |
| `image_masks/cells` | P | uint16 | full cell label masks, ragged: image i is `[mask_offset[i] : mask_offset[i] + H*W]` reshaped H,W; segments are padded to whole 65536-pixel chunks; always gzip 4 |
| `image_masks/nuclei` | P | uint16 | full nucleus label masks, same layout |
| `image_pixels` | P,4 | uint8 | full images at working size (what was segmented), same ragged layout: image i is `[mask_offset[i] : mask_offset[i] + H*W]` reshaped H,W,4 (channels last on disk, `CellCache.full_image()` returns 4,H,W); gzip 1 |
| `skipped/image_id` | K | utf-8 str | images that yielded no cells |
| `skipped/reason` | K | utf-8 str | why (no cells, unreadable, missing channel, duplicate channel file, segmentation or cropping failed, ...), naming the file where one is at fault |
| `skipped/files` | K | utf-8 str | the field's files when it was skipped: JSON `{file name: [size, mtime_ns]}` (`hpa_cells.images.files_fingerprint`); a rerun retries the field when this changed; `""` in files written before it existed (absent there: readers and writers treat it as all `""`) |

A skipped image that is retried and then yields cells leaves `skipped/` (the merge drops its row); retried and
skipped again, its row is replaced by the new reason and files. Rows are written in image id order
(`hpa_cells.cache.appending`).

Version 1 files (written before the full images were stored) lack `image_pixels` and are otherwise the same:
they stay readable for everything built on crops and masks (the crop MIL); `full_image()` on them raises a
`CellCacheSchemaError` naming the file and saying to re-run `scripts/segment.py`, and writers refuse to append
to them.

Beside the file, while a writer runs or after it was killed: `cells.h5.lock` (writer's `pid@host`),
`cells.h5.journal/NNNNNNNN.h5` (finished images, each a one-image cache of this same layout, merged
on the writer's close) and possibly `cells.h5.tmp` (an interrupted merge, removed by the next writer).
Readers only see the main file; they warn when a journal is waiting to be merged. The journal
and its merge are described in `hpa_cells.cache.journal` and `hpa_cells.cache.writer`, the lock in
`hpa_cells.cache.lock`. Runs spread over processes write shard caches of this layout into `cells.h5.shards/`
(`hpa_cells.cache.shards`), merged by `hpa_cells.cache.merging`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from hpa_cells.channels import CHANNEL_ORDER_TEXT, NUM_CHANNELS
from hpa_cells.classes import NUM_CLASSES

SCHEMA_VERSION = 2
# Version 1 lacks `image_pixels` (the full working-size images): still readable for everything that needs only
# crops and masks (the crop MIL), refused with a rebuild hint by readers of full images and by writers.
READABLE_SCHEMA_VERSIONS = (1, 2)
FIRST_VERSION_WITH_FULL_IMAGES = 2
CHANNEL_ORDER = CHANNEL_ORDER_TEXT
# The full-image masks are one flat ragged store per kind; every image's segment starts on a chunk
# boundary (segments are zero-padded to a multiple of this), so whole chunks copy between files as-is.
MASK_CHUNK_PIXELS = 65536
TABLE_CHUNK_ROWS = 4096
MAX_LABEL_ID = np.iinfo(np.uint16).max
MAX_QC_FLAGS = np.iinfo(np.uint16).max
# HDF5 1.10 file format: readable by any h5py built on HDF5 >= 1.10, with the fast append index.
LIBVER = ("v110", "v110")

# name -> h5py create_dataset keyword arguments; the cache default is chosen in benchmarks/bench_cell_cache.py.
COMPRESSIONS: dict[str, dict[str, Any]] = {
    "none": {},
    "lzf": {"compression": "lzf"},
    "gzip1": {"compression": "gzip", "compression_opts": 1},
    "gzip4": {"compression": "gzip", "compression_opts": 4},
}
DEFAULT_COMPRESSION = "gzip1"
# Full-image label masks compress ~20x and are read rarely: always gzip 4, whatever the crops use.
FULL_MASK_FILTERS: dict[str, Any] = {"compression": "gzip", "compression_opts": 4}
# Full working-size images (`image_pixels`, P,4 uint8, same ragged layout as the masks) are read once per image
# per epoch by the dense model: gzip 1, the fast-to-decompress level.
FULL_IMAGE_FILTERS: dict[str, Any] = {"compression": "gzip", "compression_opts": 1}
FULL_IMAGE_DATASET = "image_pixels"

STRING_DTYPE = h5py.string_dtype("utf-8")

# cells/ group: dataset name -> (dtype, trailing shape)
CELL_DATASETS: dict[str, tuple[Any, tuple[int, ...]]] = {
    "image_index": (np.int32, ()),
    "image_id": (STRING_DTYPE, ()),
    "cell_id": (np.int32, ()),
    "bbox": (np.int32, (4,)),
    "centroid": (np.float32, (2,)),
    "area": (np.int32, ()),
    "nucleus_area": (np.int32, ()),
    "scale": (np.float32, ()),
    "qc_flags": (np.uint16, ()),
}
IMAGE_DATASETS: dict[str, tuple[Any, tuple[int, ...]]] = {
    "id": (STRING_DTYPE, ()),
    "offset": (np.int64, ()),
    "count": (np.int32, ()),
    "original_hw": (np.int32, (2,)),
    "working_hw": (np.int32, (2,)),
    "labels": (np.uint8, (NUM_CLASSES,)),
    "has_labels": (np.uint8, ()),
    "mask_offset": (np.int64, ()),
}
SKIPPED_DATASETS: dict[str, tuple[Any, tuple[int, ...]]] = {
    "image_id": (STRING_DTYPE, ()),
    "reason": (STRING_DTYPE, ()),
    "files": (STRING_DTYPE, ()),
}
SKIPPED_FILES = "skipped/files"
"""Added within schema version 2: files written before it lack it (read as all "")."""
FULL_MASK_KINDS = ("cells", "nuclei")
PROVENANCE_ATTRS = ("segmenter", "model_sha256", "parameters_json", "qc_flag_names")


class CellCacheError(Exception):
    """Base class of cell cache errors."""


class CellCacheSchemaError(CellCacheError):
    """The file is not a cell cache, or has a schema version this code cannot read."""


class CellCacheMismatchError(CellCacheError):
    """Data to be added does not match the cache it goes to (crop size, provenance, QC flag names)."""


class CellCacheLockedError(CellCacheError):
    """Another live writer holds the cache's lock file."""


class CellCacheSpaceError(CellCacheError):
    """The disk lacks the space a cache write needs (checked before writing); `needed` and `free` in bytes."""

    def __init__(self, message: str, *, path: Path, needed: int, free: int) -> None:
        super().__init__(message)
        self.path, self.needed, self.free = path, needed, free


class DuplicateImageError(CellCacheError):
    """An image id is added to a cache that already holds it (or lists it as skipped)."""


class CellCacheInputError(CellCacheError, ValueError):
    """Arrays or records handed to the writer have the wrong shape, dtype or values."""


@dataclass(frozen=True)
class CacheProvenance:
    """Where the cells came from: the segmenter's name, its model file's sha256 ("" when it has no
    model file, e.g. the watershed baseline) and its parameters (JSON-serialisable)."""

    segmenter: str
    model_sha256: str
    parameters: Mapping[str, Any]

    def __post_init__(self) -> None:
        if not self.segmenter:
            raise ValueError("provenance needs a segmenter name")
        sha = self.model_sha256
        if sha and (len(sha) != 64 or any(ch not in "0123456789abcdef" for ch in sha)):
            raise ValueError(f"model_sha256 must be 64 lowercase hex digits or empty, got {sha!r}")

    @property
    def parameters_json(self) -> str:
        """The parameters as canonical JSON (sorted keys), the form stored and compared."""
        return json.dumps(dict(self.parameters), sort_keys=True)

    def root_attributes(self, qc_flag_names: Mapping[str, int] | Sequence[str]) -> dict[str, str]:
        """The provenance root attributes (PROVENANCE_ATTRS) of a cache made with this provenance and these QC
        flag names, as stored and compared."""
        return {"segmenter": self.segmenter, "model_sha256": self.model_sha256,
                "parameters_json": self.parameters_json,
                "qc_flag_names": json.dumps(normalise_qc_flag_names(qc_flag_names))}


def normalise_qc_flag_names(qc_flag_names: Mapping[str, int] | Sequence[str]) -> dict[str, int]:
    """QC flag names as {name: bit value}: a sequence means name i is bit value 1 << i."""
    if isinstance(qc_flag_names, Mapping):
        names = {str(k): int(v) for k, v in qc_flag_names.items()}
    elif isinstance(qc_flag_names, str):
        raise TypeError(
            "qc_flag_names must be a sequence of names or a {name: bit value} mapping, not one string"
        )
    else:
        names = {str(name): 1 << i for i, name in enumerate(qc_flag_names)}
    for name, value in names.items():
        if value <= 0 or value > MAX_QC_FLAGS or value & (value - 1):
            raise ValueError(
                f"QC flag {name!r} has value {value}; each flag must be a single bit of a uint16"
            )
    return names


def package_version() -> str:
    """hpa_cells.__version__ if the package defines one, else the schema's first release."""
    import hpa_cells

    return str(getattr(hpa_cells, "__version__", "0.1.0"))


@dataclass(frozen=True)
class ImageRows:
    """One image's data in cache form, checked by the writer before it reaches here.

    crops N,4,S,S uint8; masks N,S,S uint8; cell_columns keyed like CELL_DATASETS minus image_*;
    cells_hw / nuclei_hw H,W uint16 at working size; image_chw 4,H,W uint8 the field at working size;
    labels 28 uint8 multi-hot or None.
    """

    image_id: str
    crops: np.ndarray
    masks: np.ndarray
    cell_columns: Mapping[str, np.ndarray]
    cells_hw: np.ndarray
    nuclei_hw: np.ndarray
    image_chw: np.ndarray
    original_hw: tuple[int, int]
    labels: np.ndarray | None


def padded_pixels(height: int, width: int) -> int:
    """Length of one image's segment in the ragged full-mask store (a whole number of chunks)."""
    return -(-(height * width) // MASK_CHUNK_PIXELS) * MASK_CHUNK_PIXELS


def _image_contents(rows: ImageRows) -> dict[str, Any]:
    """Every dataset's rows for a cache holding just this image (as image 0, cells from row 0)."""
    count = rows.crops.shape[0]
    height, width = rows.cells_hw.shape
    contents: dict[str, Any] = {"crops": rows.crops, "masks": rows.masks}
    for kind, mask_hw in (("cells", rows.cells_hw), ("nuclei", rows.nuclei_hw)):
        flat = np.zeros(padded_pixels(height, width), dtype=np.uint16)
        flat[: height * width] = mask_hw.ravel()
        contents[f"image_masks/{kind}"] = flat
    pixels = np.zeros((padded_pixels(height, width), NUM_CHANNELS), dtype=np.uint8)
    pixels[: height * width] = rows.image_chw.reshape(NUM_CHANNELS, height * width).T
    contents[FULL_IMAGE_DATASET] = pixels
    contents["cells/image_index"] = np.zeros(count, dtype=np.int32)
    contents["cells/image_id"] = [rows.image_id] * count
    for name, values in rows.cell_columns.items():
        contents[f"cells/{name}"] = values
    labels = rows.labels if rows.labels is not None else np.zeros(NUM_CLASSES, dtype=np.uint8)
    contents.update(
        {
            "images/id": [rows.image_id],
            "images/offset": np.zeros(1, dtype=np.int64),
            "images/count": np.array([count], dtype=np.int32),
            "images/original_hw": np.array([rows.original_hw], dtype=np.int32),
            "images/working_hw": np.array([[height, width]], dtype=np.int32),
            "images/labels": labels[None, :].astype(np.uint8),
            "images/has_labels": np.array([rows.labels is not None], dtype=np.uint8),
            "images/mask_offset": np.zeros(1, dtype=np.int64),
        }
    )
    return contents


def _dataset_specs(
    crop_size: int, compression: str
) -> dict[str, tuple[Any, tuple[int, ...], int, dict[str, Any]]]:
    """path -> (dtype, trailing shape, rows per chunk, filter kwargs) for every dataset of the layout."""
    s = crop_size
    filters = COMPRESSIONS[compression]
    specs: dict[str, tuple[Any, tuple[int, ...], int, dict[str, Any]]] = {
        "crops": (np.uint8, (NUM_CHANNELS, s, s), 1, filters),
        "masks": (np.uint8, (s, s), 1, filters),
    }
    for kind in FULL_MASK_KINDS:
        specs[f"image_masks/{kind}"] = (np.uint16, (), MASK_CHUNK_PIXELS, FULL_MASK_FILTERS)
    specs[FULL_IMAGE_DATASET] = (np.uint8, (NUM_CHANNELS,), MASK_CHUNK_PIXELS, FULL_IMAGE_FILTERS)
    for group_name, datasets in (
        ("cells", CELL_DATASETS),
        ("images", IMAGE_DATASETS),
        ("skipped", SKIPPED_DATASETS),
    ):
        for name, (dtype, trailing) in datasets.items():
            specs[f"{group_name}/{name}"] = (dtype, trailing, TABLE_CHUNK_ROWS, {})
    return specs


def create_layout(
    f: h5py.File,
    crop_size: int,
    compression: str,
    root_attrs: Mapping[str, Any],
    *,
    image: ImageRows | None = None,
    skipped: tuple[str, str] | tuple[str, str, str] | None = None,
) -> None:
    """Create every dataset and the root attributes of a current-version cache in an empty file, holding
    nothing, or one image and/or one skipped row (a journal shard): (image id, reason[, files JSON])."""
    if compression not in COMPRESSIONS:
        raise ValueError(f"unknown compression {compression!r}; choose one of {sorted(COMPRESSIONS)}")
    contents = _image_contents(image) if image is not None else {}
    if skipped is not None:
        contents["skipped/image_id"], contents["skipped/reason"] = [skipped[0]], [skipped[1]]
        contents[SKIPPED_FILES] = [skipped[2] if len(skipped) > 2 else ""]
    for path, (dtype, trailing, chunk_rows, filters) in _dataset_specs(crop_size, compression).items():
        data = contents.get(path)
        rows = len(data) if data is not None else 0
        if chunk_rows == TABLE_CHUNK_ROWS and rows:
            chunk_rows = rows  # a shard's table is never appended to: no room for growth needed
        if data is None:
            data = np.zeros((0, *trailing), dtype=dtype if dtype is not STRING_DTYPE else object)
        elif dtype is STRING_DTYPE:
            data = np.array(data, dtype=object)
        f.create_dataset(
            path,
            data=data,
            dtype=dtype,
            maxshape=(None, *trailing),
            chunks=(chunk_rows, *trailing),
            **filters,
        )
    f.attrs["schema_version"] = SCHEMA_VERSION
    f.attrs["crop_size"] = int(crop_size)
    f.attrs["channel_order"] = CHANNEL_ORDER
    for key, value in root_attrs.items():
        f.attrs[key] = value


def check_schema(f: h5py.File, path: Path, *, for_writing: bool = False) -> int:
    """The schema version of cell cache `f`; raise CellCacheSchemaError unless this code reads it (any of
    READABLE_SCHEMA_VERSIONS), or with `for_writing`, unless it is the current version (appended to as is)."""
    if "schema_version" not in f.attrs:
        raise CellCacheSchemaError(f"{path} has no 'schema_version' attribute: not an hpa-cells cell cache")
    version = int(f.attrs["schema_version"])
    if version not in READABLE_SCHEMA_VERSIONS:
        newer = "a newer" if version > SCHEMA_VERSION else "an older"
        raise CellCacheSchemaError(
            f"{path} has cell cache schema_version {version} but this hpa-cells reads schema_versions "
            f"{READABLE_SCHEMA_VERSIONS[0]} to {SCHEMA_VERSION} ({newer} file format; use the matching hpa-cells "
            "version or rebuild the cache)"
        )
    if for_writing and version != SCHEMA_VERSION:
        raise CellCacheSchemaError(
            f"{path} is a schema_version {version} cell cache and this hpa-cells writes schema_version "
            f"{SCHEMA_VERSION} (which adds the full images); it cannot be appended to: re-run scripts/segment.py "
            "with a new --out file to rebuild it"
        )
    return version


def read_strings(dataset: h5py.Dataset, start: int = 0, stop: int | None = None) -> list[str]:
    """utf-8 strings of a 1-D string dataset as Python str."""
    return [str(s) for s in dataset.asstr()[start:stop]]


def read_skipped(f: h5py.File) -> dict[str, tuple[str, str]]:
    """The skipped table of cache `f`: image id -> (reason, files JSON), in table order ("" for files written
    before `skipped/files` existed)."""
    ids = read_strings(f["skipped/image_id"])
    reasons = read_strings(f["skipped/reason"])
    files = read_strings(f[SKIPPED_FILES]) if SKIPPED_FILES in f else [""] * len(ids)
    return {image_id: (reason, text) for image_id, reason, text in zip(ids, reasons, files, strict=True)}


def provenance_attrs(f: h5py.File) -> dict[str, str]:
    """The root attributes that must agree between a cache and data appended to it."""
    return {key: str(f.attrs.get(key, "")) for key in PROVENANCE_ATTRS}
