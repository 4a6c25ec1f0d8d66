"""Crash-safe, resumable writing of the HDF5 cell cache (layout: see `hpa_cells.cache`).

An HDF5 file appended in place can be left unopenable when its writer is killed mid-flush, so the
main file `cells.h5` is never modified in place:

1. Each finished image (or skipped image) is written as its own small cache file, a *shard*, in the
   journal folder `cells.h5.journal/`: under `NNNNNNNN.h5.part`, fsync'ed, then atomically renamed
   to `NNNNNNNN.h5` (NNNNNNNN = sequence number = merge order). A shard that was not finished never
   exists under its final name, so a killed run simply loses its unfinished image.
2. `close()` copies `cells.h5` (if any) to `cells.h5.tmp`, appends every shard to the copy (cell
   chunks move as raw compressed bytes), fsyncs it, atomically renames it over `cells.h5`, and only
   then deletes the journal. A run killed during the merge leaves the old `cells.h5` and the whole
   journal; the next run removes the stale `.tmp` and merges again. Image ids already present are
   never appended twice, so a run killed after the rename but before the journal was deleted merges
   to the same result.
3. A lock file `cells.h5.lock` (created with O_EXCL, holding `pid@host`) keeps a second writer off
   the same cache; a lock whose pid is dead on this host is taken over with a warning.

Resuming is the same command run again: `done_image_ids()` lists every image in the main file or
the journal (with cells or skipped), and the caller skips those.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np
import pandas as pd

from hpa_cells.cache.schema import (
    COMPRESSIONS,
    DEFAULT_COMPRESSION,
    LIBVER,
    MAX_LABEL_ID,
    MAX_QC_FLAGS,
    NUM_CHANNELS,
    CacheAppender,
    CacheProvenance,
    CellCacheError,
    CellCacheInputError,
    CellCacheLockedError,
    CellCacheMismatchError,
    DuplicateImageError,
    ImageRows,
    check_schema,
    create_layout,
    normalise_qc_flag_names,
    package_version,
    provenance_attrs,
    read_strings,
)
from hpa_cells.classes import NUM_CLASSES
from hpa_cells.crops import CELL_RECORD_COLUMNS, CellCrops

logger = logging.getLogger(__name__)

SHARD_NAME = re.compile(r"^(\d{8})\.h5$")
STALE_EMPTY_LOCK_S = 60.0
MERGE_PROGRESS_EVERY = 1000


def journal_dir_of(path: Path) -> Path:
    """The journal folder of cache `path` (`cells.h5` -> `cells.h5.journal`)."""
    return path.with_name(path.name + ".journal")


def journal_shards(journal_dir: Path) -> list[Path]:
    """Finished shard files of a journal, in merge (sequence) order."""
    if not journal_dir.is_dir():
        return []
    return sorted(p for p in journal_dir.iterdir() if SHARD_NAME.match(p.name))


def _fsync_file(path: Path) -> None:
    """Flush a closed file's data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    """Make renames and deletions inside a folder durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (a zombie counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class CacheLock:
    """An exclusive lock file holding `pid@host`; a lock left by a dead pid on this host is taken over."""

    def __init__(self, lock_path: Path) -> None:
        self.lock_path = lock_path
        self.token = f"{os.getpid()}@{socket.gethostname()}"
        self.held = False

    def _holder_is_stale(self) -> bool:
        """True when the existing lock file may be removed (its writer is gone, or it vanished);
        raises CellCacheLockedError naming the holder when that writer may still run."""
        try:
            content = self.lock_path.read_text().strip()
            age_s = time.time() - self.lock_path.stat().st_mtime
        except FileNotFoundError:
            return True
        pid_text, _, host = content.partition("@")
        if not pid_text.isdigit():
            if age_s > STALE_EMPTY_LOCK_S:
                logger.warning(
                    "taking over lock %s with unreadable content %r (%.0f s old)",
                    self.lock_path,
                    content,
                    age_s,
                )
                return True
            raise CellCacheLockedError(
                f"{self.lock_path} is being created by another writer (content {content!r})"
            )
        pid = int(pid_text)
        if host != socket.gethostname():
            raise CellCacheLockedError(
                f"{self.lock_path} is held by pid {pid} on host {host!r}; if no writer runs there, delete the lock file"
            )
        if pid == os.getpid():
            raise CellCacheLockedError(
                f"{self.lock_path} is held by running process {pid} (this process: close the earlier CellCacheWriter first)"
            )
        if _pid_alive(pid):
            raise CellCacheLockedError(
                f"{self.lock_path} is held by running process {pid}: another writer is using this cache"
            )
        logger.warning("taking over stale lock %s left by dead process %d", self.lock_path, pid)
        return True

    def acquire(self) -> None:
        """Create the lock file or raise CellCacheLockedError naming its holder."""
        for _ in range(3):
            try:
                fd = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self._holder_is_stale():
                    self.lock_path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as handle:
                handle.write(self.token)
                handle.flush()
                os.fsync(handle.fileno())
            self.held = True
            return
        raise CellCacheLockedError(f"could not take {self.lock_path}: other writers keep creating it")

    def release(self) -> None:
        """Delete the lock file if this object holds it."""
        if not self.held:
            return
        try:
            if self.lock_path.read_text().strip() == self.token:
                self.lock_path.unlink()
            else:
                logger.warning("lock %s no longer holds %s; leaving it", self.lock_path, self.token)
        except FileNotFoundError:
            logger.warning("lock %s vanished before release", self.lock_path)
        self.held = False


def _compression_name(dataset: h5py.Dataset) -> str:
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
        self.tmp_path = self.path.with_name(self.path.name + ".tmp")
        self._provenance = {
            "segmenter": provenance.segmenter,
            "model_sha256": provenance.model_sha256,
            "parameters_json": provenance.parameters_json,
            "qc_flag_names": _qc_names_json(normalise_qc_flag_names(qc_flag_names)),
        }
        self._created = _utc_now()
        self._done: set[str] = set()
        self._next_seq = 0
        self._closed = False
        self._lock = CacheLock(self.path.with_name(self.path.name + ".lock"))
        self._lock.acquire()
        try:
            self._recover()
        except BaseException:
            self._lock.release()
            raise

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
            if existing == self._provenance[key]:
                continue
            if key.endswith("_json"):
                changes = "; ".join(_json_differences(existing, self._provenance[key])[:4])
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
        if self.journal_dir.is_dir():
            for part in sorted(self.journal_dir.glob("*.part")):
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
                self._done.update(read_strings(f["images/id"]))
                self._done.update(read_strings(f["skipped/image_id"]))
                existing_compression = _compression_name(f["crops"])
            if existing_compression != self.compression:
                logger.info("%s uses %s compression; new cells follow it", self.path, existing_compression)
                self.compression = existing_compression
        shards = journal_shards(self.journal_dir)
        for shard in shards:
            try:
                with h5py.File(shard, "r") as f:
                    self._check_compatible(f, shard)
                    self._done.update(read_strings(f["images/id"]))
                    self._done.update(read_strings(f["skipped/image_id"]))
            except OSError as error:
                raise CellCacheError(
                    f"journal shard {shard} cannot be read ({error}); move it away and rerun"
                ) from error
        if shards:
            self._next_seq = int(SHARD_NAME.match(shards[-1].name).group(1)) + 1
            logger.info(
                "resuming %s: %d finished images in its journal %s", self.path, len(shards), self.journal_dir
            )

    # ----- adding ------------------------------------------------------------------------
    def done_image_ids(self) -> frozenset[str]:
        """Ids already in the cache or its journal, with cells or skipped: the caller skips these."""
        return frozenset(self._done)

    def _root_attrs(self) -> dict[str, Any]:
        return {**self._provenance, "package_version": package_version(), "created": self._created}

    def _write_shard(self, rows: ImageRows | None, skipped: tuple[str, str] | None) -> Path:
        """Write one image or one skipped row as a journal shard: temp name, fsync, atomic rename."""
        if not self.journal_dir.is_dir():
            self.journal_dir.mkdir(parents=True)
            _fsync_dir(self.journal_dir.parent)
        final = self.journal_dir / f"{self._next_seq:08d}.h5"
        part = final.with_name(final.name + ".part")
        try:
            with h5py.File(part, "w", libver=LIBVER) as f:
                create_layout(
                    f, self.crop_size, self.compression, self._root_attrs(), image=rows, skipped=skipped
                )
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        _fsync_file(part)
        os.replace(part, final)
        _fsync_dir(self.journal_dir)
        self._next_seq += 1
        return final

    def _check_open_and_new(self, image_id: str) -> None:
        if self._closed:
            raise CellCacheError(f"writer for {self.path} is closed")
        if not isinstance(image_id, str) or not image_id:
            raise CellCacheInputError(f"image id must be a non-empty string, got {image_id!r}")
        if image_id in self._done:
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
        rows = _checked_rows(
            image_id, self.crop_size, crops, masks, cell_records, cells_hw, nuclei_hw, image_chw, original_hw, labels
        )
        self._write_shard(rows, None)
        self._done.add(image_id)

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

    def add_skipped(self, image_id: str, reason: str) -> None:
        """Record an image that yields no cells (no cells found, unreadable, missing channel)."""
        self._check_open_and_new(image_id)
        if not reason:
            raise CellCacheInputError(f"image {image_id!r}: a skipped image needs a reason")
        self._write_shard(None, (image_id, str(reason)))
        self._done.add(image_id)

    # ----- finishing ---------------------------------------------------------------------
    def _merge(self) -> None:
        """Fold the main file and all journal shards into a new main file (see the module docstring)."""
        shards = journal_shards(self.journal_dir)
        if not shards and self.path.exists():
            logger.info("%s: nothing new to merge", self.path)
            return
        try:
            totals = self._merge_into_tmp(shards)
        except BaseException:
            self.tmp_path.unlink(missing_ok=True)  # the journal and the old main file are intact
            raise
        _fsync_file(self.tmp_path)
        os.replace(self.tmp_path, self.path)
        _fsync_dir(self.path.parent)
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
            tmp.attrs["modified"] = _utc_now()
            return (
                appender.added_images,
                appender.added_skipped,
                tmp["images/id"].shape[0],
                tmp["crops"].shape[0],
            )

    def _delete_journal(self, shards: list[Path]) -> None:
        """Remove merged shards and the journal folder (safe to interrupt: merges skip known ids)."""
        for shard in shards:
            shard.unlink(missing_ok=True)
        if self.journal_dir.is_dir() and not any(self.journal_dir.iterdir()):
            self.journal_dir.rmdir()
        _fsync_dir(self.path.parent)

    def close(self) -> None:
        """Merge the journal into the main file and release the lock."""
        if self._closed:
            return
        self._closed = True
        try:
            self._merge()
        finally:
            self._lock.release()

    def abandon(self) -> None:
        """Release the lock without merging; the journal stays and the next writer resumes from it."""
        if self._closed:
            return
        self._closed = True
        self._lock.release()
        logger.warning(
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


def _qc_names_json(names: Mapping[str, int]) -> str:
    """QC flag names as stored: a JSON object {name: bit value} in the given order."""
    return json.dumps(dict(names))


def _checked_rows(
    image_id: str,
    crop_size: int,
    crops: np.ndarray,
    masks: np.ndarray,
    cell_records: pd.DataFrame,
    cells_hw: np.ndarray,
    nuclei_hw: np.ndarray,
    image_chw: np.ndarray,
    original_hw: tuple[int, int],
    labels: np.ndarray | None,
) -> ImageRows:
    """Validate one image's arrays and records and convert them to the stored dtypes."""
    s = crop_size
    crops = np.asarray(crops)
    masks = np.asarray(masks)
    if crops.dtype != np.uint8 or crops.ndim != 4 or crops.shape[1:] != (NUM_CHANNELS, s, s):
        raise CellCacheInputError(
            f"image {image_id!r}: crops must be N,{NUM_CHANNELS},{s},{s} uint8; got {crops.dtype} {crops.shape}"
        )
    n = crops.shape[0]
    if n == 0:
        raise CellCacheInputError(
            f"image {image_id!r} has no cells; record it with add_skipped(image_id, reason)"
        )
    if masks.dtype != np.uint8 or masks.shape != (n, s, s):
        raise CellCacheInputError(
            f"image {image_id!r}: masks must be {n},{s},{s} uint8; got {masks.dtype} {masks.shape}"
        )
    if int(masks.max()) > 1:
        raise CellCacheInputError(f"image {image_id!r}: masks must hold 0/1, found {int(masks.max())}")
    if not isinstance(cell_records, pd.DataFrame):
        raise CellCacheInputError(
            f"image {image_id!r}: cell_records must be a DataFrame, got {type(cell_records).__name__}"
        )
    missing = [c for c in CELL_RECORD_COLUMNS if c not in cell_records.columns]
    if missing:
        raise CellCacheInputError(f"image {image_id!r}: cell_records lacks columns {missing}")
    if len(cell_records) != n:
        raise CellCacheInputError(f"image {image_id!r}: {len(cell_records)} cell records for {n} crops")
    cell_ids = cell_records["cell_id"].to_numpy()
    if (cell_ids <= 0).any() or (np.diff(cell_ids) <= 0).any():
        raise CellCacheInputError(
            f"image {image_id!r}: cell ids must be positive and strictly increasing, got {cell_ids.tolist()[:20]}"
        )
    qc = cell_records["qc_flags"].to_numpy()
    if (qc < 0).any() or (qc > MAX_QC_FLAGS).any():
        raise CellCacheInputError(
            f"image {image_id!r}: qc_flags must fit a uint16, got range {qc.min()}..{qc.max()}"
        )
    label_masks = []
    for name, mask_hw in (("cells_hw", cells_hw), ("nuclei_hw", nuclei_hw)):
        mask_hw = np.asarray(mask_hw)
        if mask_hw.ndim != 2 or not np.issubdtype(mask_hw.dtype, np.integer):
            raise CellCacheInputError(
                f"image {image_id!r}: {name} must be an H,W integer label mask; got {mask_hw.dtype} {mask_hw.shape}"
            )
        if mask_hw.size and (int(mask_hw.min()) < 0 or int(mask_hw.max()) > MAX_LABEL_ID):
            raise CellCacheInputError(f"image {image_id!r}: {name} labels must be within 0..{MAX_LABEL_ID}")
        label_masks.append(mask_hw.astype(np.uint16))
    if label_masks[0].shape != label_masks[1].shape:
        raise CellCacheInputError(
            f"image {image_id!r}: cells_hw {label_masks[0].shape} and nuclei_hw {label_masks[1].shape} differ in shape"
        )
    image_chw = np.asarray(image_chw)
    if image_chw.dtype != np.uint8 or image_chw.shape != (NUM_CHANNELS, *label_masks[0].shape):
        raise CellCacheInputError(
            f"image {image_id!r}: image_chw must be {NUM_CHANNELS},H,W uint8 with H,W of cells_hw "
            f"{label_masks[0].shape}; got {image_chw.dtype} {image_chw.shape}"
        )
    if len(original_hw) != 2 or min(int(v) for v in original_hw) <= 0:
        raise CellCacheInputError(
            f"image {image_id!r}: original_hw must be (height, width) > 0, got {original_hw}"
        )
    labels_u8 = None
    if labels is not None:
        labels_arr = np.asarray(labels)
        if labels_arr.shape != (NUM_CLASSES,) or not np.isin(labels_arr, (0, 1)).all():
            raise CellCacheInputError(
                f"image {image_id!r}: labels must be a {NUM_CLASSES}-long 0/1 multi-hot vector, got {labels_arr!r}"
            )
        labels_u8 = labels_arr.astype(np.uint8)
    records = cell_records
    columns = {
        "cell_id": cell_ids.astype(np.int32),
        "bbox": records[["bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1"]].to_numpy(dtype=np.int32),
        "centroid": records[["centroid_y", "centroid_x"]].to_numpy(dtype=np.float32),
        "area": records["area"].to_numpy(dtype=np.int32),
        "nucleus_area": records["nucleus_area"].to_numpy(dtype=np.int32),
        "scale": records["scale"].to_numpy(dtype=np.float32),
        "qc_flags": qc.astype(np.uint16),
    }
    return ImageRows(
        image_id=image_id,
        crops=crops,
        masks=masks,
        cell_columns=columns,
        cells_hw=label_masks[0],
        nuclei_hw=label_masks[1],
        image_chw=np.ascontiguousarray(image_chw),
        original_hw=(int(original_hw[0]), int(original_hw[1])),
        labels=labels_u8,
    )


def _json_differences(stored: str, current: str) -> list[str]:
    """The settings that differ between two JSON documents, as 'dotted.key: X in the file, Y now' ('missing' for
    a key one side lacks); the whole documents when either is not JSON."""
    try:
        old, new = json.loads(stored), json.loads(current)
    except ValueError:
        return [f"{stored!r} in the file, {current!r} now"]
    out: list[str] = []

    def walk(a: object, b: object, path: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                walk(a.get(key, _MISSING), b.get(key, _MISSING), f"{path}.{key}" if path else str(key))
        elif a != b:
            out.append(f"{path or 'value'}: {'missing' if a is _MISSING else json.dumps(a)} in the file, "
                       f"{'missing' if b is _MISSING else json.dumps(b)} now")

    walk(old, new, "")
    return out or [f"{stored!r} in the file, {current!r} now"]


_MISSING = object()
