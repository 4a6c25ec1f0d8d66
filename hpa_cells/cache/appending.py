"""Appending the images and skipped rows of other cache files to one open cache (layout: `hpa_cells.cache.schema`).

Used by the writer's journal merge (`hpa_cells.cache.writer`: every one-image journal shard, in order) and by the
merge of shard caches (`hpa_cells.cache.merging`: chosen images of many multi-image caches, in image id order).
Crops, masks, full masks and full images move as raw compressed chunks when the filters match (no decompression);
the small tables are collected and written once by `CacheAppender.finish()`.

The skipped table is written in image id order: its rows are records keyed by id (the order a run met the fields
in means nothing), and one canonical order makes a cache merged from shards identical to a single-process one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import h5py
import numpy as np

from hpa_cells.cache.schema import (
    CELL_DATASETS,
    FULL_IMAGE_DATASET,
    FULL_MASK_KINDS,
    IMAGE_DATASETS,
    SKIPPED_FILES,
    STRING_DTYPE,
    TABLE_CHUNK_ROWS,
    DuplicateImageError,
    padded_pixels,
    read_skipped,
    read_strings,
)

__all__ = ["CHUNKED_DATASETS", "CacheAppender", "SourceImages", "copy_rows"]

CHUNKED_DATASETS = ("crops", "masks", *(f"image_masks/{kind}" for kind in FULL_MASK_KINDS), FULL_IMAGE_DATASET)
"""The large datasets, copied chunk by chunk."""
RAGGED_DATASETS = (*(f"image_masks/{kind}" for kind in FULL_MASK_KINDS), FULL_IMAGE_DATASET)
"""The per-image ragged stores (one padded segment per image at `images/mask_offset`)."""
COPIED_CELL_COLUMNS = tuple(name for name in CELL_DATASETS if name not in ("image_index", "image_id"))
"""The per-cell columns copied as they are (image_index and image_id are rewritten for the destination)."""


def _same_filters(src: h5py.Dataset, dst: h5py.Dataset) -> bool:
    """Whether raw chunks of `src` are valid chunks of `dst` (same chunk shape, dtype and filters)."""
    return (
        src.chunks == dst.chunks
        and src.dtype == dst.dtype
        and src.compression == dst.compression
        and src.compression_opts == dst.compression_opts
        and src.shuffle == dst.shuffle
        and src.fletcher32 == dst.fletcher32
        and src.scaleoffset == dst.scaleoffset
    )


def copy_rows(src: h5py.Dataset, src_start: int, dst: h5py.Dataset, count: int) -> int:
    """Append src rows [src_start, src_start + count) to `dst`, as raw compressed chunks when both have
    the same filters and the rows are chunk-aligned (no decompression), else by reading and writing.
    Returns the first new row of `dst`."""
    dst_start = dst.shape[0]
    if count == 0:
        return dst_start
    dst.resize(dst_start + count, axis=0)
    rows_per_chunk = src.chunks[0] if src.chunks else 0
    aligned = (
        rows_per_chunk > 0
        and _same_filters(src, dst)
        and src_start % rows_per_chunk == 0
        and dst_start % rows_per_chunk == 0
        and count % rows_per_chunk == 0
    )
    if not aligned:
        dst[dst_start : dst_start + count] = src[src_start : src_start + count]
        return dst_start
    tail = (0,) * (src.ndim - 1)
    src_id, dst_id = src.id, dst.id
    for row in range(0, count, rows_per_chunk):
        filter_mask, chunk = src_id.read_direct_chunk((src_start + row, *tail))
        dst_id.write_direct_chunk((dst_start + row, *tail), chunk, filter_mask)
    return dst_start


def _rewrite_skipped(dst: h5py.File, rows: Mapping[str, tuple[str, str]]) -> None:
    """Replace `dst`'s whole skipped table by `rows`, in image id order (creating `skipped/files` in an older
    file)."""
    ordered = sorted(rows.items())
    columns = {
        "skipped/image_id": [image_id for image_id, _ in ordered],
        "skipped/reason": [reason for _, (reason, _) in ordered],
        SKIPPED_FILES: [files for _, (_, files) in ordered],
    }
    if SKIPPED_FILES not in dst:
        dst.create_dataset(SKIPPED_FILES, shape=(0,), dtype=STRING_DTYPE, maxshape=(None,),
                           chunks=(TABLE_CHUNK_ROWS,))
    for path, values in columns.items():
        dataset = dst[path]
        dataset.resize(len(values), axis=0)
        if values:
            dataset[:] = np.array(values, dtype=object)


class SourceImages:
    """The images of one cache file open for reading: ids and the per-image table read once, each image's cells
    read when it is copied (so a large source costs memory for its index only)."""

    def __init__(self, src: h5py.File) -> None:
        self.file = src
        self.ids = read_strings(src["images/id"])
        self.row_of = {image_id: row for row, image_id in enumerate(self.ids)}
        self.images = {name: src[f"images/{name}"][:] for name in IMAGE_DATASETS if name != "id"}

    def cell_rows(self, row: int) -> slice:
        """Rows of image `row`'s cells in every per-cell dataset."""
        start = int(self.images["offset"][row])
        return slice(start, start + int(self.images["count"][row]))

    def pixel_rows(self, row: int) -> slice:
        """Image `row`'s padded segment in the ragged full-mask and full-image stores."""
        height, width = (int(v) for v in self.images["working_hw"][row])
        start = int(self.images["mask_offset"][row])
        return slice(start, start + padded_pixels(height, width))


class CacheAppender:
    """Appends the images and skipped rows of other cache files to one open cache, never an id twice.

    The skipped table is kept whole in memory: a later skipped row of an id replaces the earlier one (a retried
    field skipped again), and an image added with cells removes its id's skipped row (a retried field that
    succeeded); `finish()` writes it in image id order.
    """

    def __init__(self, dst: h5py.File) -> None:
        self.dst = dst
        self._chunked = {path: dst[path] for path in CHUNKED_DATASETS}
        self._tables = {f"{g}/{n}": dst[f"{g}/{n}"] for g, datasets in (("cells", CELL_DATASETS),
                                                                        ("images", IMAGE_DATASETS)) for n in datasets}
        self._pending: dict[str, list[Any]] = {path: [] for path in self._tables}
        self.known_image_ids = set(read_strings(dst["images/id"]))
        self.skipped_rows = read_skipped(dst)
        self._skipped_changed = SKIPPED_FILES not in dst
        self._next_image = dst["images/id"].shape[0]
        self.added_images = 0
        self.added_skipped = 0
        self.retried_ok = 0

    def add_from(self, src: h5py.File) -> None:
        """Queue every image and skipped row of cache `src` whose id this cache does not hold yet."""
        source = SourceImages(src)
        for row, image_id in enumerate(source.ids):
            if image_id not in self.known_image_ids:
                self.add_image(source, row)
        self.add_skipped(read_skipped(src))

    def add_skipped(self, rows: Mapping[str, tuple[str, str]]) -> None:
        """Queue skipped rows (image id -> (reason, files JSON)); ids that have cells here are left out, and a row
        replaces an earlier one of its id."""
        for image_id, row in rows.items():
            if image_id in self.known_image_ids or self.skipped_rows.get(image_id) == row:
                continue
            self.skipped_rows[image_id] = row
            self._skipped_changed = True
            self.added_skipped += 1

    def add_image(self, source: SourceImages, row: int) -> None:
        """Append image `row` of `source` (its cells, masks, full masks and image; its table rows are queued)."""
        image_id = source.ids[row]
        if image_id in self.known_image_ids:
            raise DuplicateImageError(f"image {image_id!r} of {source.file.filename} is already in {self.dst.filename}")
        cells, pixels = source.cell_rows(row), source.pixel_rows(row)
        count = cells.stop - cells.start
        cell_offset = copy_rows(source.file["crops"], cells.start, self._chunked["crops"], count)
        copy_rows(source.file["masks"], cells.start, self._chunked["masks"], count)
        mask_offset = self._chunked[RAGGED_DATASETS[0]].shape[0]
        for path in RAGGED_DATASETS:
            copy_rows(source.file[path], pixels.start, self._chunked[path], pixels.stop - pixels.start)
        pending = self._pending
        pending["cells/image_index"].append(np.full(count, self._next_image, dtype=np.int32))
        pending["cells/image_id"].append([image_id] * count)
        for name in COPIED_CELL_COLUMNS:
            pending[f"cells/{name}"].append(source.file[f"cells/{name}"][cells])
        pending["images/id"].append([image_id])
        pending["images/offset"].append(np.array([cell_offset], dtype=np.int64))
        pending["images/mask_offset"].append(np.array([mask_offset], dtype=np.int64))
        for name in ("count", "original_hw", "working_hw", "labels", "has_labels"):
            pending[f"images/{name}"].append(source.images[name][row : row + 1])
        self.known_image_ids.add(image_id)
        if self.skipped_rows.pop(image_id, None) is not None:
            self._skipped_changed = True
            self.retried_ok += 1
        self._next_image += 1
        self.added_images += 1

    def finish(self) -> None:
        """Write the queued table rows (one resize and one write per table) and the skipped table if it changed."""
        for path, parts in self._pending.items():
            if not parts:
                continue
            dataset = self._tables[path]
            if dataset.dtype.kind == "O":
                values: Any = np.array([v for part in parts for v in part], dtype=object)
            else:
                values = np.concatenate(parts)
            start = dataset.shape[0]
            dataset.resize(start + len(values), axis=0)
            dataset[start:] = values
            parts.clear()
        if self._skipped_changed:
            _rewrite_skipped(self.dst, self.skipped_rows)
            self._skipped_changed = False
