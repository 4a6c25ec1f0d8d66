"""Per-pixel class probability maps of a dense model: the file `pixel_probabilities.h5` of a prediction folder.

Layout (HDF5): `image_ids` (M utf-8 strings) and `maps/NNNNNN` (one dataset per image, in `image_ids` order):
`28,h,w` uint8 = round(255 x probability) inside the cells that were pooled, 0 elsewhere, at the model's output
resolution over the field (`h,w` = the field's working size scaled so the longer side is the model's input size);
attribute `working_hw` = the field's working size. gzip 4, one chunk per class plane. Readers resize to the size
they draw at (`read_pixel_map`). An ensemble's file holds the mean of its dense members' maps.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType

import cv2
import h5py
import numpy as np

from hpa_cells.atomic_files import atomic_output

logger = logging.getLogger(__name__)

PIXEL_MAPS_FILE = "pixel_probabilities.h5"


class PixelMapError(ValueError):
    """A pixel map file that is unreadable or lacks an image; names the file."""


class PixelMapWriter:
    """Writes `pixel_probabilities.h5` image by image (to a temporary name, renamed on close: see
    `hpa_cells.atomic_files`)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._output = ExitStack()
        self._tmp = self._output.enter_context(atomic_output(self.path))
        try:
            self._file = h5py.File(self._tmp, "w")
        except BaseException:
            self._output.__exit__(*sys.exc_info())
            raise
        self._maps = self._file.create_group("maps")
        self._ids: list[str] = []

    def add(self, image_id: str, probabilities_u8: np.ndarray, working_hw: tuple[int, int]) -> None:
        """One image's `K,h,w` uint8 map."""
        if probabilities_u8.dtype != np.uint8 or probabilities_u8.ndim != 3:
            raise PixelMapError(f"{self.path}: image {image_id}: expected a K,h,w uint8 map, got "
                                f"{probabilities_u8.dtype} {probabilities_u8.shape}")
        dataset = self._maps.create_dataset(f"{len(self._ids):06d}", data=probabilities_u8, compression="gzip",
                                            compression_opts=4, chunks=(1, *probabilities_u8.shape[1:]))
        dataset.attrs["working_hw"] = np.asarray(working_hw, dtype=np.int32)
        self._ids.append(image_id)

    def close(self) -> Path:
        if self._file.id.valid:
            self._file.create_dataset("image_ids", data=np.array(self._ids, dtype=object),
                                      dtype=h5py.string_dtype("utf-8"))
            self._file.close()
            self._output.close()  # renames the finished file over `path`
        return self.path

    def __enter__(self) -> PixelMapWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self._file.close()
            self._output.__exit__(exc_type, exc, tb)  # removes the temporary file


class PixelMaps:
    """Read access to a `pixel_probabilities.h5`; a context manager."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as error:
            raise PixelMapError(f"{self.path} cannot be opened as HDF5: {error}") from error
        if "image_ids" not in self._file or "maps" not in self._file:
            self._file.close()
            raise PixelMapError(f"{self.path} is not a pixel map file (no image_ids / maps)")
        self._index = {str(s): i for i, s in enumerate(self._file["image_ids"].asstr()[:])}

    @property
    def image_ids(self) -> list[str]:
        return list(self._index)

    def raw(self, image_id: str) -> tuple[np.ndarray, tuple[int, int]]:
        """(the stored `K,h,w` uint8 map, the field's working size)."""
        if image_id not in self._index:
            raise PixelMapError(f"image {image_id!r} is not in {self.path}")
        dataset = self._file["maps"][f"{self._index[image_id]:06d}"]
        return dataset[:], tuple(int(v) for v in dataset.attrs["working_hw"])

    def read(self, image_id: str, out_hw: tuple[int, int] | None = None) -> np.ndarray:
        """`K,H,W` uint8 map resized (bilinear) to `out_hw` (default: the working size)."""
        stored, working_hw = self.raw(image_id)
        return resize_planes(stored, out_hw or working_hw)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> PixelMaps:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def resize_planes(planes: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """`K,h,w` planes resized to `K,H,W` with bilinear interpolation (dtype kept)."""
    if planes.shape[1:] == tuple(out_hw):
        return planes
    height, width = out_hw
    return np.stack([cv2.resize(plane, (width, height), interpolation=cv2.INTER_LINEAR) for plane in planes])


def average_pixel_map_files(paths: Sequence[Path], out_path: Path) -> Path:
    """Write the per-image mean of several pixel map files (each image resized to the largest member's map)."""
    readers = [PixelMaps(path) for path in paths]
    try:
        ids = readers[0].image_ids
        for reader in readers[1:]:
            if reader.image_ids != ids:
                raise PixelMapError(f"{reader.path} and {readers[0].path} hold different images")
        with PixelMapWriter(out_path) as writer:
            for image_id in ids:
                members = [reader.raw(image_id) for reader in readers]
                out_hw = max((m.shape[1:] for m, _ in members), key=lambda hw: hw[0] * hw[1])
                mean = np.mean([resize_planes(m, out_hw).astype(np.float32) for m, _ in members], axis=0)
                writer.add(image_id, np.round(mean).astype(np.uint8), members[0][1])
    finally:
        for reader in readers:
            reader.close()
    return out_path
