"""Crash-safe, resumable writing of the HDF5 cell cache (layout: `hpa_cells.cache.schema`).

An HDF5 file appended in place can be left unopenable when its writer is killed mid-flush, so the
main file `cells.h5` is never modified in place:

1. Each finished image (or skipped image) is written as its own small cache file, a *shard*, in the
   journal folder `cells.h5.journal/`: under `NNNNNNNN.h5.part`, fsync'ed, then atomically renamed
   to `NNNNNNNN.h5` (NNNNNNNN = sequence number = merge order). A shard that was not finished never
   exists under its final name, so a killed run simply loses its unfinished image (`hpa_cells.cache.journal`).
2. `close()` copies `cells.h5` (if any) to `cells.h5.tmp`, appends every shard to the copy (cell
   chunks move as raw compressed bytes), fsyncs it, atomically renames it over `cells.h5`, and only
   then deletes the journal. A run killed during the merge leaves the old `cells.h5` and the whole
   journal; the next run removes the stale `.tmp` and merges again. Image ids already present are
   never appended twice, so a run killed after the rename but before the journal was deleted merges
   to the same result.
3. A lock file `cells.h5.lock` (created with O_EXCL, holding `pid@host`) keeps a second writer off
   the same cache; a lock whose pid is dead on this host is taken over with a warning (`hpa_cells.cache.lock`).

Resuming is the same command run again: `done_image_ids()` lists every image in the main file or
the journal (with cells or skipped), and the caller skips those (or retries a skipped one: its latest record
wins at the merge, and an image added with cells removes its skipped row).

Labels are data, not part of segmentation: `update_labels()` sets the image-level labels of images already in
the cache (applied during the merge, so under the same crash-safety), and `labels_changed` says afterwards how
many images' labels changed.

Disk space: a shard is refused before h5py starts writing when the disk lacks room for it
(`CellCacheSpaceError`, nothing half-written), and the merge checks before starting that the cache's folder has
room for the merged copy (about the main file's size plus the journal's; `merge_space_needed`). Either way the
main file and the journal stay valid for a resume once space is freed.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np
import pandas as pd

from hpa_cells.cache.appending import CacheAppender
from hpa_cells.cache.inputs import checked_rows
from hpa_cells.cache.journal import (
    delete_shards,
    fsync_dir,
    fsync_file,
    journal_dir_of,
    journal_shards,
    merge_tmp_path_of,
    next_sequence,
    unfinished_shards,
    write_shard,
)
from hpa_cells.cache.label_updates import apply_label_updates, label_rows, labels_would_change
from hpa_cells.cache.lock import CacheLock, lock_path_of
from hpa_cells.cache.schema import (
    COMPRESSIONS,
    DEFAULT_COMPRESSION,
    LIBVER,
    CacheProvenance,
    CellCacheError,
    CellCacheInputError,
    CellCacheMismatchError,
    CellCacheSpaceError,
    DuplicateImageError,
    ImageRows,
    check_schema,
    create_layout,
    package_version,
    provenance_attrs,
    read_skipped,
    read_strings,
)
from hpa_cells.cache.settings import same_settings, settings_differences
from hpa_cells.crops import CellCrops

logger = logging.getLogger(__name__)

__all__ = ["CellCacheWriter", "check_free_space", "compression_name", "format_bytes", "merge_space_needed"]

MERGE_PROGRESS_EVERY = 1000
SPACE_MARGIN_BYTES = 16 * 2**20
"""Free space kept beyond an estimate before writing a shard or merging (HDF5 metadata, other writers)."""
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)
"""OSErrors meaning the disk cannot take more data (full, over quota, read-only, file too large)."""


def format_bytes(count: int) -> str:
    """A byte count for people: '1.4 GB', '310 MB', '12 kB'."""
    for unit, size in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} B"


def merge_space_needed(path: Path) -> int:
    """Free bytes the journal merge of cache `path` needs in its folder: a copy of the main file plus the journal's
    contents (the old main file and the journal stay until the merged copy replaces them), plus a margin."""
    from hpa_cells.cache.journal import journal_dir_of, journal_shards

    main = path.stat().st_size if path.is_file() else 0
    return main + sum(p.stat().st_size for p in journal_shards(journal_dir_of(path))) + SPACE_MARGIN_BYTES


def check_free_space(folder: Path, needed: int, what: str, target: Path) -> None:
    """Raise CellCacheSpaceError unless `folder`'s disk has `needed` bytes free."""
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise CellCacheSpaceError(
            f"{target}: {what} needs about {format_bytes(needed)} free in {folder} but only {format_bytes(free)} "
            "is free; free some space and rerun (the cache and its journal are kept for the resume)",
            path=target, needed=needed, free=free,
        )


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def compression_name(dataset: h5py.Dataset) -> str:
    """The COMPRESSIONS key matching a dataset's filters (so shards match the main file's chunks)."""
    for name, kwargs in COMPRESSIONS.items():
        if dataset.compression == kwargs.get("compression") and dataset.compression_opts == kwargs.get(
            "compression_opts"
        ):
            return name
    raise CellCacheError(
        f"{dataset.file.filename}: crops use unsupported filter {dataset.compression}/{dataset.compression_opts}"
    )


class CellCacheWriter:
    """Adds images' cells to a cell cache, crash-safely (see the module docstring); a context manager.

    Leaving the `with` block normally or by an exception merges the journal into the main file;
    leaving it by KeyboardInterrupt or SystemExit only releases the lock (the next run merges).

    path: the cache file, e.g. `cells.h5`; created on the first close if missing, else appended to.
    crop_size: S of the N,4,S,S crops; must match an existing cache.
    provenance: segmenter, model sha256 and parameters; must match an existing cache and journal.
    qc_flag_names: names of the QC bits, a {name: bit value} mapping or a sequence (name i = bit 1 << i).
    compression: one of COMPRESSIONS for a new cache; an existing cache keeps its own.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        crop_size: int,
        provenance: CacheProvenance,
        qc_flag_names: Mapping[str, int] | Sequence[str],
        *,
        compression: str = DEFAULT_COMPRESSION,
    ) -> None:
        if compression not in COMPRESSIONS:
            raise ValueError(f"unknown compression {compression!r}; choose one of {sorted(COMPRESSIONS)}")
        if crop_size < 4:
            raise ValueError(f"crop_size must be at least 4, got {crop_size}")
        self.path = Path(path)
        self.crop_size = int(crop_size)
        self.compression = compression
        self.journal_dir = journal_dir_of(self.path)
        self.tmp_path = merge_tmp_path_of(self.path)
        self._provenance = provenance.root_attributes(qc_flag_names)
        self._created = _utc_now()
        self._label_updates: dict[str, np.ndarray] | None = None
        self.labels_changed: int | None = None
        """After close: images already in the cache whose labels `update_labels` changed (None: no update)."""
        self._images: set[str] = set()
        self._skipped: dict[str, tuple[str, str]] = {}
        self._next_seq = 0
        self._closed = False
        if self.path.is_dir():
            raise CellCacheError(f"{self.path} is a folder, not a cache file: give a file name such as "
                                 f"{self.path / 'cells.h5'}")
        self._lock = CacheLock(lock_path_of(self.path))
        self._lock.acquire()
        try:
            self._recover()
        except BaseException:
            self._lock.release()
            raise

    @classmethod
    def for_existing(cls, path: str | os.PathLike[str]) -> CellCacheWriter:
        """A writer for an existing cache with the cache's own crop size, provenance and QC flags (for changes
        that are not segmentation, such as `update_labels`). Raises CellCacheError for a missing or foreign file."""
        path = Path(path)
        if not path.is_file():
            raise CellCacheError(f"{path} is a folder, not a cache file" if path.is_dir() else f"no cache at {path}")
        try:
            with h5py.File(path, "r") as f:
                check_schema(f, path, for_writing=True)
                attrs = provenance_attrs(f)
                crop_size = int(f.attrs["crop_size"])
        except OSError as error:
            raise CellCacheError(f"{path} cannot be opened as HDF5 ({error})") from error
        provenance = CacheProvenance(attrs["segmenter"], attrs["model_sha256"], json.loads(attrs["parameters_json"]))
        return cls(path, crop_size, provenance, json.loads(attrs["qc_flag_names"]))

    # ----- opening and repair -------------------------------------------------------------
    def _check_compatible(self, f: h5py.File, file_path: Path) -> None:
        """Raise CellCacheMismatchError if `f` was written with other settings than this writer's."""
        check_schema(f, file_path, for_writing=True)
        existing_size = int(f.attrs["crop_size"])
        if existing_size != self.crop_size:
            raise CellCacheMismatchError(
                f"{file_path} holds crops of size {existing_size} but this writer makes size {self.crop_size}; "
                "use another cache file or the same crop size"
            )
        for key, existing in provenance_attrs(f).items():
            if existing == self._provenance[key] or (key.endswith("_json")
                                                     and same_settings(existing, self._provenance[key])):
                continue
            if key.endswith("_json"):
                changes = "; ".join(settings_differences(existing, self._provenance[key])[:4])
                raise CellCacheMismatchError(
                    f"{file_path} was written with other {key.removesuffix('_json')}: {changes}; use another cache "
                    "file or the same segmentation settings"
                )
            raise CellCacheMismatchError(
                f"{file_path} was written with {key}={existing!r} but this writer has {key}={self._provenance[key]!r}; "
                "use another cache file or the same segmentation settings"
            )

    def _recover(self) -> None:
        """Remove leftovers of a killed run and collect the ids already done (main file + journal)."""
        if self.tmp_path.exists():
            logger.warning(
                "removing %s left by an interrupted merge; its journal is merged again", self.tmp_path
            )
            self.tmp_path.unlink()
        for part in unfinished_shards(self.journal_dir):
            logger.warning("dropping unfinished shard %s of an interrupted run", part)
            part.unlink()
        if self.path.exists():
            try:
                main = h5py.File(self.path, "r")
            except OSError as error:
                raise CellCacheError(
                    f"{self.path} cannot be opened as HDF5 ({error}); writers only ever replace it whole, so it "
                    "was damaged from outside: move it away (its journal, if any, is kept)"
                ) from error
            with main as f:
                self._check_compatible(f, self.path)
                self._note_contents(f)
                existing_compression = compression_name(f["crops"])
            if existing_compression != self.compression:
                logger.info("%s uses %s compression; new cells follow it", self.path, existing_compression)
                self.compression = existing_compression
        shards = journal_shards(self.journal_dir)
        for shard in shards:
            try:
                with h5py.File(shard, "r") as f:
                    self._check_compatible(f, shard)
                    self._note_contents(f)
            except OSError as error:
                raise CellCacheError(
                    f"journal shard {shard} cannot be read ({error}); move it away and rerun"
                ) from error
        if shards:
            self._next_seq = next_sequence(shards)
            logger.info(
                "resuming %s: %d finished images in its journal %s", self.path, len(shards), self.journal_dir
            )

    def _note_contents(self, f: h5py.File) -> None:
        """Fold one file's images and skipped rows (main file first, then shards in order) into what is done."""
        for image_id in read_strings(f["images/id"]):
            self._images.add(image_id)
            self._skipped.pop(image_id, None)
        for image_id, row in read_skipped(f).items():
            if image_id not in self._images:
                self._skipped[image_id] = row

    # ----- adding ------------------------------------------------------------------------
    def done_image_ids(self) -> frozenset[str]:
        """Ids already in the cache or its journal, with cells or skipped."""
        return frozenset(self._images | set(self._skipped))

    def image_ids_with_cells(self) -> frozenset[str]:
        """Ids already in the cache or its journal with cells: never added again."""
        return frozenset(self._images)

    def skipped_records(self) -> dict[str, tuple[str, str]]:
        """Skipped ids (cache and journal, latest record): id -> (reason, files JSON, "" when not recorded). Such
        an id may be added again, with cells or as skipped (a retry): the merge keeps the latest."""
        return dict(self._skipped)

    def _root_attrs(self) -> dict[str, Any]:
        return {**self._provenance, "package_version": package_version(), "created": self._created}

    def _write_shard(self, rows: ImageRows | None, skipped: tuple[str, str, str] | None) -> Path:
        """Write one image or one skipped row as a journal shard: temp name, fsync, atomic rename."""

        def fill(f: h5py.File) -> None:
            create_layout(
                f, self.crop_size, self.compression, self._root_attrs(), image=rows, skipped=skipped
            )

        raw = 0 if rows is None else sum(a.nbytes for a in (rows.crops, rows.masks, rows.cells_hw, rows.nuclei_hw,
                                                             rows.image_chw))
        folder = self.journal_dir if self.journal_dir.is_dir() else self.path.parent
        check_free_space(folder, raw + SPACE_MARGIN_BYTES, "writing the next journal shard", self.journal_dir)
        final = write_shard(self.journal_dir, self._next_seq, fill)
        self._next_seq += 1
        return final

    def _check_open_and_new(self, image_id: str) -> None:
        if self._closed:
            raise CellCacheError(f"writer for {self.path} is closed")
        if not isinstance(image_id, str) or not image_id:
            raise CellCacheInputError(f"image id must be a non-empty string, got {image_id!r}")
        if image_id in self._images:
            raise DuplicateImageError(
                f"image {image_id!r} is already in {self.path} or its journal; skip the ids in done_image_ids()"
            )

    def add_image(
        self,
        image_id: str,
        crops: np.ndarray,
        masks: np.ndarray,
        cell_records: pd.DataFrame,
        cells_hw: np.ndarray,
        nuclei_hw: np.ndarray,
        original_hw: tuple[int, int],
        labels: np.ndarray | None,
        *,
        image_chw: np.ndarray,
    ) -> None:
        """Journal one image's cells; durable when this returns.

        crops N,4,S,S uint8 and masks N,S,S uint8 (0/1) in increasing cell id order; cell_records one
        row per cell with crops.CELL_RECORD_COLUMNS; cells_hw / nuclei_hw the H,W label masks at
        working size; original_hw the field's size before resizing; labels a 28-long 0/1 multi-hot
        vector, or None for unlabelled data; image_chw the 4,H,W uint8 field at working size (what the
        masks were made from; the dense model reads it). An image without cells belongs in add_skipped.
        """
        self._check_open_and_new(image_id)
        rows = checked_rows(
            image_id, self.crop_size, crops, masks, cell_records, cells_hw, nuclei_hw, image_chw, original_hw, labels
        )
        self._write_shard(rows, None)
        self._images.add(image_id)
        self._skipped.pop(image_id, None)

    def add_cell_crops(
        self,
        image_id: str,
        cell_crops: CellCrops,
        cells_hw: np.ndarray,
        nuclei_hw: np.ndarray,
        original_hw: tuple[int, int],
        labels: np.ndarray | None,
        *,
        image_chw: np.ndarray,
    ) -> None:
        """add_image for the output of crops.extract_cell_crops (cut from `image_chw`)."""
        self.add_image(
            image_id,
            cell_crops.crops,
            cell_crops.masks,
            cell_crops.table,
            cells_hw,
            nuclei_hw,
            original_hw,
            labels,
            image_chw=image_chw,
        )

    def add_skipped(self, image_id: str, reason: str, files: str = "") -> None:
        """Record an image that yields no cells (no cells found, unreadable, missing channel, a failure while
        segmenting or cropping it), with its files' fingerprint (`hpa_cells.images.files_fingerprint`) so a
        rerun can tell whether they changed. Replaces an earlier skip of the same id."""
        self._check_open_and_new(image_id)
        if not reason:
            raise CellCacheInputError(f"image {image_id!r}: a skipped image needs a reason")
        self._write_shard(None, (image_id, str(reason), str(files)))
        self._skipped[image_id] = (str(reason), str(files))

    def update_labels(self, labels: Mapping[str, Sequence[int]]) -> None:
        """Set the labels (image id -> class ids) of the images this cache holds when it is closed: applied in
        the merge, to images already in the cache and to those added now. Images not in `labels` keep theirs."""
        self._label_updates = label_rows(labels)

    # ----- finishing ---------------------------------------------------------------------
    def _merge(self) -> None:
        """Fold the main file and all journal shards into a new main file (see the module docstring)."""
        shards = journal_shards(self.journal_dir)
        if not shards and self.path.exists() and not labels_would_change(self.path, self._label_updates):
            logger.info("%s: nothing new to merge", self.path)
            if self._label_updates is not None:
                self.labels_changed = 0
            return
        check_free_space(self.path.parent, merge_space_needed(self.path), "merging the journal", self.path)
        try:
            totals = self._merge_into_tmp(shards)
        except BaseException:
            self.tmp_path.unlink(missing_ok=True)  # the journal and the old main file are intact
            raise
        # Not hpa_cells.atomic_files: the temporary name `cells.h5.tmp` is part of the recovery contract (the
        # next writer removes it), and the rename must be made durable (folder fsync) before the journal goes.
        fsync_file(self.tmp_path)
        os.replace(self.tmp_path, self.path)
        fsync_dir(self.path.parent)
        self._delete_journal(shards)
        logger.info(
            "%s: merged %d images and %d skipped from the journal; now %d images, %d cells",
            self.path,
            *totals,
        )

    def _merge_into_tmp(self, shards: list[Path]) -> tuple[int, int, int, int]:
        """Write main file + shards to the .tmp file; returns images and skipped added, total images and cells."""
        created = self._created
        if not self.path.exists() and shards:
            with h5py.File(shards[0], "r") as first:
                created = str(first.attrs.get("created", created))
        if self.path.exists():
            shutil.copyfile(self.path, self.tmp_path)
        else:
            with h5py.File(self.tmp_path, "w", libver=LIBVER) as new:
                create_layout(
                    new, self.crop_size, self.compression, {**self._root_attrs(), "created": created}
                )
        with h5py.File(self.tmp_path, "r+") as tmp:
            appender = CacheAppender(tmp)
            for done, shard in enumerate(shards, start=1):
                with h5py.File(shard, "r") as src:
                    appender.add_from(src)
                if done % MERGE_PROGRESS_EVERY == 0:
                    logger.info("merging into %s: %d / %d journal shards", self.tmp_path, done, len(shards))
            appender.finish()
            changed = apply_label_updates(tmp, self._label_updates)
            if self._label_updates is not None:
                self.labels_changed = changed
            tmp.attrs["modified"] = _utc_now()
            return (
                appender.added_images,
                appender.added_skipped,
                tmp["images/id"].shape[0],
                tmp["crops"].shape[0],
            )

    def _delete_journal(self, shards: list[Path]) -> None:
        """Remove merged shards and the journal folder (safe to interrupt: merges skip known ids)."""
        delete_shards(self.journal_dir, shards)

    def close(self) -> None:
        """Merge the journal into the main file and release the lock."""
        if self._closed:
            return
        self._closed = True
        try:
            self._merge()
        finally:
            self._lock.release()

    def abandon(self, *, quiet: bool = False) -> None:
        """Release the lock without merging; the journal stays and the next writer resumes from it. `quiet` logs
        that at info level (the caller's own error says it, e.g. disk full)."""
        if self._closed:
            return
        self._closed = True
        self._lock.release()
        (logger.info if quiet else logger.warning)(
            "%s: writer stopped early; %d finished images stay in %s for the next run",
            self.path,
            len(journal_shards(self.journal_dir)),
            self.journal_dir,
        )

    def __enter__(self) -> CellCacheWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        elif isinstance(exc, CellCacheSpaceError) or (isinstance(exc, OSError) and exc.errno in DISK_ERRNOS):
            self.abandon(quiet=True)  # the disk is full or read-only: a merge would fail too; the next run merges
        elif issubclass(exc_type, Exception):
            # An error in the caller's loop: the finished images are complete, so merge them now and
            # let the caller's exception propagate (a failing merge is logged, its journal kept).
            try:
                self.close()
            except Exception:
                logger.exception(
                    "%s: merging after an error failed; the journal stays for the next run", self.path
                )
        else:
            self.abandon()  # KeyboardInterrupt / SystemExit: leave fast, the next run merges

