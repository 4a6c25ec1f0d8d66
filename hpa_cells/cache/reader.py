"""Reading the HDF5 cell cache: `CellCache`, every kept cell of every image as a fixed-size crop, in one file.

Segmentation runs once; training and prediction read only this file. The layout is documented in
`hpa_cells.cache.schema`; `hpa_cells.cache.writer` writes the file crash-safely. This module does not depend on
the writer: it only lists the journal (`hpa_cells.cache.journal`) to warn about images not merged yet.

## Reading from DataLoader workers

`CellCache` opens the HDF5 file lazily, once per process: the constructor reads the small index and
closes the file again, and the first data read in a process opens its own handle. A handle is never
shared across fork (a child notices the pid change and reopens), and pickling sends only the path,
so each DataLoader worker reads through its own handle.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np
import pandas as pd

from hpa_cells.cache.journal import journal_dir_of, journal_shards
from hpa_cells.cache.schema import (
    FIRST_VERSION_WITH_FULL_IMAGES,
    FULL_IMAGE_DATASET,
    NUM_CHANNELS,
    CellCacheError,
    CellCacheSchemaError,
    check_schema,
    read_skipped,
    read_strings,
)

__all__ = ["CellCache"]

logger = logging.getLogger(__name__)

ImageKey = str | int | np.integer


class CellCache:
    """Read-only access to a cell cache file; a context manager, safe to use from DataLoader workers.

    `len(cache)` is the number of cells; `num_images` the number of images.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"cell cache {self.path} does not exist")
        try:
            opened = h5py.File(self.path, "r")
        except OSError as error:
            raise CellCacheError(f"cell cache {self.path} cannot be opened as HDF5: {error}") from error
        with opened as f:
            self.schema_version = check_schema(f, self.path)
            self._attrs = {key: _plain(value) for key, value in f.attrs.items()}
            self._image_ids = read_strings(f["images/id"])
            self._offsets = f["images/offset"][:]
            self._counts = f["images/count"][:]
            self._original_hw = f["images/original_hw"][:]
            self._working_hw = f["images/working_hw"][:]
            self._labels = f["images/labels"][:]
            self._has_labels = f["images/has_labels"][:].astype(bool)
            self._mask_offsets = f["images/mask_offset"][:]
            self._num_cells = int(f["crops"].shape[0])
        self._index_of = {image_id: i for i, image_id in enumerate(self._image_ids)}
        self.crop_size = int(self._attrs["crop_size"])
        self._file: h5py.File | None = None
        self._file_pid: int | None = None
        self._datasets: dict[str, h5py.Dataset] = {}
        waiting = journal_shards(journal_dir_of(self.path))
        if waiting:
            logger.warning(
                "%s has %d unmerged journal shards from an interrupted writer; they are not visible here "
                "until a CellCacheWriter on this file runs and closes",
                self.path,
                len(waiting),
            )

    # ----- handle management ---------------------------------------------------------------
    def _h5(self) -> h5py.File:
        """This process's own open handle (opened on first use, reopened after fork)."""
        if self._file is None or self._file_pid != os.getpid():
            self._file = h5py.File(self.path, "r")
            self._file_pid = os.getpid()
            self._datasets = {}
        return self._file

    def _dataset(self, name: str) -> h5py.Dataset:
        """A dataset of this process's handle, looked up once (the hot path of bag reading)."""
        f = self._h5()
        if name not in self._datasets:
            self._datasets[name] = f[name]
        return self._datasets[name]

    def close(self) -> None:
        """Close this process's handle (a handle inherited across fork is left to its owner)."""
        if self._file is not None and self._file_pid == os.getpid():
            self._file.close()
        self._file = None
        self._file_pid = None
        self._datasets = {}

    def __enter__(self) -> CellCache:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_file"] = None
        state["_file_pid"] = None
        state["_datasets"] = {}
        return state

    # ----- sizes and ids -------------------------------------------------------------------
    def __len__(self) -> int:
        return self._num_cells

    @property
    def num_images(self) -> int:
        return len(self._image_ids)

    @property
    def image_ids(self) -> list[str]:
        """Image ids in storage order (index i = `images/` row i)."""
        return list(self._image_ids)

    def image_index(self, key: ImageKey) -> int:
        """Row of an image given its id or its index; KeyError/IndexError name the file."""
        if isinstance(key, str):
            try:
                return self._index_of[key]
            except KeyError:
                raise KeyError(f"image {key!r} is not in cell cache {self.path}") from None
        if isinstance(key, int | np.integer) and not isinstance(key, bool):
            index = int(key)
            if not 0 <= index < len(self._image_ids):
                raise IndexError(
                    f"image index {index} is out of range for {self.path} with {len(self._image_ids)} images"
                )
            return index
        raise TypeError(f"image key must be an id (str) or an index (int), got {type(key).__name__}")

    def cell_slice(self, key: ImageKey) -> slice:
        """Rows of an image's cells in every per-cell dataset."""
        index = self.image_index(key)
        start = int(self._offsets[index])
        return slice(start, start + int(self._counts[index]))

    # ----- data ----------------------------------------------------------------------------
    def cells_of(self, key: ImageKey, positions: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(crops N,4,S,S uint8, masks N,S,S uint8) of one image, read as one contiguous slice.

        positions: optional strictly increasing cell positions within the image (0..count-1) to read
        only those cells (e.g. a random subset of a large bag); other cells are not decompressed.
        """
        rows = self.cell_slice(key)
        if positions is None:
            return self._dataset("crops")[rows], self._dataset("masks")[rows]
        positions = np.asarray(positions, dtype=np.int64)
        count = rows.stop - rows.start
        if positions.ndim != 1 or (np.diff(positions) <= 0).any():
            raise ValueError(
                f"positions must be strictly increasing 1-D cell positions, got {positions.tolist()}"
            )
        if len(positions) and (positions[0] < 0 or positions[-1] >= count):
            raise IndexError(
                f"cell positions {positions.tolist()} out of range for image {key!r} with {count} cells in {self.path}"
            )
        selection = rows.start + positions
        return self._dataset("crops")[selection], self._dataset("masks")[selection]

    def full_masks(self, key: ImageKey) -> tuple[np.ndarray, np.ndarray]:
        """(cells H,W, nuclei H,W) uint16 label masks of one image at working size."""
        index = self.image_index(key)
        height, width = (int(v) for v in self._working_hw[index])
        start = int(self._mask_offsets[index])
        cells = self._dataset("image_masks/cells")[start : start + height * width].reshape(height, width)
        nuclei = self._dataset("image_masks/nuclei")[start : start + height * width].reshape(height, width)
        return cells, nuclei

    @property
    def has_full_images(self) -> bool:
        """Whether the file stores the full working-size images (schema version 2 on)."""
        return self.schema_version >= FIRST_VERSION_WITH_FULL_IMAGES

    def require_full_images(self, needed_by: str) -> None:
        """Raise CellCacheSchemaError naming the file and the fix unless it stores the full images."""
        if not self.has_full_images:
            raise CellCacheSchemaError(
                f"{self.path} is a schema_version {self.schema_version} cell cache without the full images that "
                f"{needed_by} needs; re-run scripts/segment.py --images DIR --out NEW.h5 (same segmenter options) "
                "to rebuild it with schema_version 2 (the crop MIL still reads this file)"
            )

    def full_image(self, key: ImageKey) -> np.ndarray:
        """The 4,H,W uint8 image at working size (channels red, green, blue, yellow), as segmented."""
        self.require_full_images("reading full images")
        index = self.image_index(key)
        height, width = (int(v) for v in self._working_hw[index])
        start = int(self._mask_offsets[index])
        pixels = self._dataset(FULL_IMAGE_DATASET)[start : start + height * width]
        return np.ascontiguousarray(pixels.reshape(height, width, NUM_CHANNELS).transpose(2, 0, 1))

    @property
    def labels(self) -> np.ndarray:
        """M,28 uint8 multi-hot image labels (rows of unlabelled images are zeros)."""
        return self._labels.copy()

    @property
    def has_labels(self) -> np.ndarray:
        """M bool: which images came with labels."""
        return self._has_labels.copy()

    def cell_table(self) -> pd.DataFrame:
        """One row per cell in storage order: image_index, image_id, cell_id, bbox_y0, bbox_x0, bbox_y1,
        bbox_x1, centroid_y, centroid_x, area, nucleus_area, scale, qc_flags."""
        cells = self._h5()["cells"]
        bbox = cells["bbox"][:]
        centroid = cells["centroid"][:]
        return pd.DataFrame(
            {
                "image_index": cells["image_index"][:],
                "image_id": read_strings(cells["image_id"]),
                "cell_id": cells["cell_id"][:],
                "bbox_y0": bbox[:, 0],
                "bbox_x0": bbox[:, 1],
                "bbox_y1": bbox[:, 2],
                "bbox_x1": bbox[:, 3],
                "centroid_y": centroid[:, 0],
                "centroid_x": centroid[:, 1],
                "area": cells["area"][:],
                "nucleus_area": cells["nucleus_area"][:],
                "scale": cells["scale"][:],
                "qc_flags": cells["qc_flags"][:],
            }
        )

    def image_table(self) -> pd.DataFrame:
        """One row per image: image_id, offset, count, original_h/w, working_h/w, has_labels and
        label_ids (tuple of 2018 class ids, empty when unlabelled)."""
        return pd.DataFrame(
            {
                "image_id": self._image_ids,
                "offset": self._offsets,
                "count": self._counts,
                "original_h": self._original_hw[:, 0],
                "original_w": self._original_hw[:, 1],
                "working_h": self._working_hw[:, 0],
                "working_w": self._working_hw[:, 1],
                "has_labels": self._has_labels,
                "label_ids": [tuple(int(c) for c in np.flatnonzero(row)) for row in self._labels],
            }
        )

    @property
    def skipped(self) -> pd.DataFrame:
        """Images that yielded no cells: image_id, reason."""
        group = self._h5()["skipped"]
        return pd.DataFrame(
            {"image_id": read_strings(group["image_id"]), "reason": read_strings(group["reason"])}
        )

    @property
    def skipped_files(self) -> pd.DataFrame:
        """The skipped table with each field's files: image_id, reason, files (the file names recorded with the
        skip, a tuple; empty for files written before `skipped/files` existed)."""
        rows = read_skipped(self._h5())
        return pd.DataFrame({
            "image_id": list(rows),
            "reason": [reason for reason, _ in rows.values()],
            "files": [tuple(sorted(json.loads(files))) if files else () for _, files in rows.values()],
        })

    @property
    def qc_flag_names(self) -> dict[str, int]:
        """{QC flag name: bit value} for `qc_flags`."""
        return dict(json.loads(self._attrs["qc_flag_names"]))

    @property
    def provenance(self) -> dict[str, Any]:
        """Root attributes, with `parameters` and `qc_flag_names` decoded from their JSON."""
        info = dict(self._attrs)
        info["parameters"] = json.loads(info.pop("parameters_json"))
        info["qc_flag_names"] = self.qc_flag_names
        return info

    def verify(self) -> None:
        """Check the file's internal consistency (row counts, offsets tiling the cells, unique ids,
        cell-to-image links); raise CellCacheError naming the problem."""
        f = self._h5()
        n = self._num_cells
        for name in ("masks", *(f"cells/{k}" for k in f["cells"])):
            if f[name].shape[0] != n:
                raise CellCacheError(f"{self.path}: {name} has {f[name].shape[0]} rows but crops has {n}")
        starts = (
            np.concatenate([[0], np.cumsum(self._counts)[:-1]]).astype(np.int64)
            if self.num_images
            else self._offsets
        )
        if not np.array_equal(self._offsets, starts) or int(self._counts.sum()) != n:
            raise CellCacheError(f"{self.path}: images/offset and images/count do not tile the {n} cells")
        if len(self._index_of) != self.num_images:
            raise CellCacheError(f"{self.path}: images/id holds duplicate image ids")
        if not np.array_equal(f["cells/image_index"][:], np.repeat(np.arange(self.num_images), self._counts)):
            raise CellCacheError(
                f"{self.path}: cells/image_index does not match images/offset and images/count"
            )
        if read_strings(f["cells/image_id"]) != [self._image_ids[i] for i in f["cells/image_index"][:]]:
            raise CellCacheError(f"{self.path}: cells/image_id does not match cells/image_index")
        if self.has_full_images and f[FULL_IMAGE_DATASET].shape[0] != f["image_masks/cells"].shape[0]:
            raise CellCacheError(
                f"{self.path}: {FULL_IMAGE_DATASET} has {f[FULL_IMAGE_DATASET].shape[0]} pixel rows but "
                f"image_masks/cells has {f['image_masks/cells'].shape[0]}"
            )


def _plain(value: Any) -> Any:
    """An HDF5 attribute value as a plain Python value."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.generic):
        return value.item()
    return value
