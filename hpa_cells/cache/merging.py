"""Merging shard caches into one cell cache (`hpa-cells merge-caches`; the end of `segment.py --scheduler`).

The merged cache is identical, cell for cell, to the cache one process would have written from the same fields
with the same settings (`segmentation.segment_to_cache`):

- images already in OUT stay first, in their order (then OUT's own journal, if a writer on it was killed, as that
  writer's next close would merge it); the shards' new images follow in image id order, the order in which one
  process segments a folder (it plans sorted ids);
- the skipped table is in image id order (every writer writes it so); a later shard's row of an id replaces an
  earlier one, and an id with cells in any shard has no skipped row;
- crops, masks, full masks, full images, the per-cell and per-image tables and labels are the shards' own values;
  the provenance attributes (segmenter, model sha256, parameters, QC flag names) are the same in every shard, or
  the merge is refused. What may differ from a single-process cache: the `created` / `modified` time stamps
  (`created` is the earliest of the sources'), and the HDF5 file's byte layout.

Refused, with a message naming the shard (`CellCacheMismatchError`): a shard made with another crop size or other
settings than OUT (or than the first shard), naming the setting; an image in two shards with different content,
naming the dataset that differs. A shard whose lock names a live writer is refused too (`CellCacheLockedError`).

Crash-safe and resumable like the writer's own merge: OUT is locked, the merged copy is written to `OUT.tmp`,
fsync'ed and atomically renamed over OUT; the shards are only read (`hpa_cells.cache.shards.remove_shard_cache`
deletes them afterwards, on request). A merge killed before the rename leaves OUT and the shards as they were (the
next merge or writer removes the `.tmp`); rerun after the rename, it finds the shards' images in OUT and adds
nothing twice.
"""

from __future__ import annotations

import hashlib
import logging
import os
import resource
import shutil
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType

import h5py
import numpy as np

from hpa_cells.cache.appending import COPIED_CELL_COLUMNS, RAGGED_DATASETS, CacheAppender, SourceImages
from hpa_cells.cache.journal import delete_shards, fsync_dir, fsync_file, journal_dir_of, merge_tmp_path_of
from hpa_cells.cache.label_updates import apply_label_updates, label_rows, labels_would_change
from hpa_cells.cache.lock import CacheLock, lock_path_of
from hpa_cells.cache.schema import (
    LIBVER,
    CellCacheError,
    CellCacheMismatchError,
    check_schema,
    create_layout,
    package_version,
    provenance_attrs,
    read_skipped,
    read_strings,
)
from hpa_cells.cache.settings import settings_mismatch
from hpa_cells.cache.shards import cache_files, check_not_being_written
from hpa_cells.cache.writer import SPACE_MARGIN_BYTES, check_free_space, compression_name

__all__ = ["MergeSummary", "merge_caches"]

logger = logging.getLogger(__name__)

MAX_OPEN_SOURCES = 128
"""Shard files kept open at once while copying (fewer when the process may open few files)."""


@dataclass
class MergeSummary:
    """What one merge did, and what OUT holds afterwards."""

    out: Path
    shards: int = 0
    images_added: int = 0
    images_already_in_out: int = 0
    """Shard images OUT held already (a rerun after a merge, or fields segmented twice): not added again."""
    duplicates: int = 0
    """Images found in two shards with the same content (kept once)."""
    images_total: int = 0
    cells_total: int = 0
    skipped_total: int = 0
    labels_changed: int | None = None
    written: bool = False
    seconds: float = 0.0

    def lines(self) -> list[str]:
        action = "merged" if self.written else "nothing new to merge from"
        out = [f"{action} {self.shards} shard cache(s) -> {self.out}: {self.images_added} images added, "
               f"{self.images_already_in_out} already there"
               + (f", {self.duplicates} found identical in two shards" if self.duplicates else ""),
               f"{self.out.name} holds {self.images_total} images, {self.cells_total} cells, "
               f"{self.skipped_total} skipped fields ({self.seconds:.1f} s)"]
        if self.labels_changed:
            out.append(f"labels changed for {self.labels_changed} image(s) already in the cache")
        return out


@dataclass
class _File:
    """One readable file of a source cache (its main file or a journal shard) and what it holds."""

    path: Path
    cache: Path
    attrs: dict[str, str]
    crop_size: int
    compression: str
    created: str
    ids: list[str]
    skipped: dict[str, tuple[str, str]]

    @property
    def name(self) -> str:
        return str(self.cache) if self.path == self.cache else f"{self.cache} (journal file {self.path.name})"


def _read_file(path: Path, cache: Path) -> _File:
    """A source file's settings and contents; CellCacheError naming it when it is no writable-version cache."""
    try:
        with h5py.File(path, "r") as f:
            check_schema(f, path, for_writing=True)
            return _File(path, cache, provenance_attrs(f), int(f.attrs["crop_size"]), compression_name(f["crops"]),
                         str(f.attrs.get("created", "")), read_strings(f["images/id"]), read_skipped(f))
    except (OSError, KeyError) as error:
        raise CellCacheError(f"{path} cannot be read as a cell cache ({error})") from error


@dataclass
class _Plan:
    """What the merge adds: new image id -> holders (index into the shard files, row), the shards' skipped rows."""

    out_ids: set[str]
    holders: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    skipped: dict[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def new_ids(self) -> list[str]:
        return sorted(image_id for image_id in self.holders if image_id not in self.out_ids)


def _plan(out_files: Sequence[_File], shard_files: Sequence[_File]) -> _Plan:
    plan = _Plan({image_id for file in out_files for image_id in file.ids})
    for index, file in enumerate(shard_files):
        for row, image_id in enumerate(file.ids):
            plan.holders.setdefault(image_id, []).append((index, row))
        plan.skipped.update(file.skipped)
    return plan


def _check_settings(out: Path, files: Sequence[_File]) -> None:
    """Every file agrees with the first (OUT's main file, else its journal, else the first shard)."""
    reference = files[0]
    for file in files[1:]:
        why = settings_mismatch(reference.attrs, reference.crop_size, file.attrs, file.crop_size,
                                first=f"in {reference.name}", second=f"in {file.name}")
        if why is not None:
            raise CellCacheMismatchError(
                f"cannot merge {file.cache} into {out}: it was made with other settings than {reference.cache}: "
                f"{why}; merge only shards of one command (same segmenter, model and options)")


def _image_parts(source: SourceImages, row: int) -> dict[str, str]:
    """sha256 of each of one image's datasets (its table rows, cells, masks, full masks and image)."""
    cells, pixels = source.cell_rows(row), source.pixel_rows(row)
    height, width = (int(v) for v in source.images["working_hw"][row])
    parts: dict[str, bytes] = {f"images/{name}": np.ascontiguousarray(source.images[name][row]).tobytes()
                               for name in ("count", "original_hw", "working_hw", "labels", "has_labels")}
    for name in (*(f"cells/{c}" for c in COPIED_CELL_COLUMNS), "crops", "masks"):
        parts[name] = np.ascontiguousarray(source.file[name][cells]).tobytes()
    for name in RAGGED_DATASETS:
        parts[name] = np.ascontiguousarray(source.file[name][pixels.start:pixels.start + height * width]).tobytes()
    return {name: hashlib.sha256(data).hexdigest() for name, data in parts.items()}


class _OpenSources:
    """The shard files open for reading, at most `capacity` at once (least recently used closed first)."""

    def __init__(self, files: Sequence[_File]) -> None:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.capacity = max(4, min(MAX_OPEN_SOURCES, (soft if soft > 0 else 1024) // 4))
        self.files = files
        self._open: OrderedDict[int, SourceImages] = OrderedDict()

    def get(self, index: int) -> SourceImages:
        if index in self._open:
            self._open.move_to_end(index)
            return self._open[index]
        if len(self._open) >= self.capacity:
            self._open.popitem(last=False)[1].file.close()
        self._open[index] = SourceImages(h5py.File(self.files[index].path, "r"))
        return self._open[index]

    def __enter__(self) -> _OpenSources:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for source in self._open.values():
            source.file.close()
        self._open.clear()


def _check_duplicates(plan: _Plan, files: Sequence[_File], sources: _OpenSources) -> int:
    """Refuse an image held by two shards with different content; the number held twice with the same."""
    duplicates = 0
    for image_id in plan.new_ids:
        holders = plan.holders[image_id]
        if len(holders) < 2:
            continue
        first = _image_parts(sources.get(holders[0][0]), holders[0][1])
        for index, row in holders[1:]:
            other = _image_parts(sources.get(index), row)
            differing = [name for name in first if first[name] != other[name]]
            if differing:
                raise CellCacheMismatchError(
                    f"image {image_id!r} is in {files[holders[0][0]].name} and in {files[index].name} with different "
                    f"{', '.join(differing)}; keep one of the two shards (or re-segment the field into one)")
            duplicates += 1
    return duplicates


def _skipped_after(out_files: Sequence[_File], plan: _Plan) -> dict[str, tuple[str, str]]:
    """OUT's skipped table after the merge, before sorting."""
    rows: dict[str, tuple[str, str]] = {}
    with_cells = set(plan.out_ids) | set(plan.holders)
    for source in (*(file.skipped for file in out_files), plan.skipped):
        rows.update((image_id, row) for image_id, row in source.items() if image_id not in with_cells)
    return rows


def _nothing_to_write(out: Path, out_files: Sequence[_File], plan: _Plan, labels: Mapping | None) -> bool:
    """True when OUT exists, has no journal, and the merge would change none of its images, skips or labels."""
    if not out.is_file() or len(out_files) != 1 or plan.new_ids:
        return False
    return _skipped_after(out_files, plan) == out_files[0].skipped and not labels_would_change(out, labels)


def merge_caches(out: Path, shards: Sequence[Path], *, labels: Mapping[str, Sequence[int]] | None = None,
                 foreign_locks_ok: bool = False) -> MergeSummary:
    """Merge shard caches (paths of cache files; a shard killed before its first close is its journal) into
    cache `out`, created if missing; `labels` (image id -> class ids) replace the stored labels of the images they
    name, as `segment.py --labels` does. `foreign_locks_ok` merges shards whose lock names another host (their
    writers are known to be over). See the module docstring for the guarantees and refusals."""
    started = time.time()
    out = Path(out)
    shards = list(dict.fromkeys(Path(p) for p in shards))
    if any(p.resolve() == out.resolve() for p in shards):
        raise CellCacheError(f"{out} is both the merged cache and one of the shards")
    lock = CacheLock(lock_path_of(out))
    lock.acquire()
    try:
        summary = _merge_locked(out, shards, label_rows(labels) if labels is not None else None, foreign_locks_ok)
    finally:
        lock.release()
    summary.seconds = time.time() - started
    return summary


def _source_files(out: Path, shards: Sequence[Path], foreign_locks_ok: bool) -> tuple[list[_File], list[_File]]:
    """OUT's files and the shards' files, read; refuses a shard still written or without any file."""
    tmp = merge_tmp_path_of(out)
    if tmp.exists():
        logger.warning("removing %s left by an interrupted merge", tmp)
        tmp.unlink()
    for part in journal_dir_of(out).glob("*.part"):
        part.unlink()
    out_files = [_read_file(path, out) for path in cache_files(out)]
    shard_files = []
    for shard in shards:
        check_not_being_written(shard, foreign_ok=foreign_locks_ok)
        paths = cache_files(shard)
        if not paths:
            raise CellCacheError(f"{shard}: no cell cache there (neither the file nor its journal "
                                 f"{journal_dir_of(shard)})")
        shard_files += [_read_file(path, shard) for path in paths]
    return out_files, shard_files


def _merge_locked(out: Path, shards: Sequence[Path], label_updates: dict[str, np.ndarray] | None,
                  foreign_locks_ok: bool) -> MergeSummary:
    out_files, shard_files = _source_files(out, shards, foreign_locks_ok)
    summary = MergeSummary(out=out, shards=len(shards))
    if not out_files and not shard_files:
        raise CellCacheError(f"nothing to merge: {out} does not exist and no shard cache was given")
    _check_settings(out, [*out_files, *shard_files])
    plan = _plan(out_files, shard_files)
    summary.images_already_in_out = sum(1 for image_id in plan.holders if image_id in plan.out_ids)
    with _OpenSources(shard_files) as sources:
        summary.duplicates = _check_duplicates(plan, shard_files, sources)
        if _nothing_to_write(out, out_files, plan, label_updates):
            logger.info("%s: nothing new to merge", out)
            summary.labels_changed = 0 if label_updates is not None else None
        else:
            needed = sum(p.stat().st_size for p in (out, *(f.path for f in shard_files)) if p.is_file())
            check_free_space(out.parent, needed + SPACE_MARGIN_BYTES, "merging the shard caches", out)
            tmp = merge_tmp_path_of(out)
            try:
                changed = _write_merged(out, tmp, out_files, shard_files, plan, sources, label_updates)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            fsync_file(tmp)
            os.replace(tmp, out)
            fsync_dir(out.parent)
            delete_shards(journal_dir_of(out), [f.path for f in out_files if f.path != out])
            summary.written, summary.images_added = True, len(plan.new_ids)
            summary.labels_changed = changed if label_updates is not None else None
    with h5py.File(out, "r") as f:
        summary.images_total, summary.cells_total = f["images/id"].shape[0], f["crops"].shape[0]
        summary.skipped_total = f["skipped/image_id"].shape[0]
    return summary


def _write_merged(out: Path, tmp: Path, out_files: Sequence[_File], shard_files: Sequence[_File], plan: _Plan,
                  sources: _OpenSources, label_updates: dict[str, np.ndarray] | None) -> int:
    """Write OUT's contents, its journal, then the shards' new images and skipped rows into `tmp`; returns the
    number of images whose labels `label_updates` changed."""
    journal = [f for f in out_files if f.path != out]
    if out.is_file():
        shutil.copyfile(out, tmp)
    else:
        first = (journal or shard_files)[0]
        created = min((f.created for f in (journal or shard_files) if f.created),
                      default=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        with h5py.File(tmp, "w", libver=LIBVER) as new:
            create_layout(new, first.crop_size, first.compression,
                          {**first.attrs, "package_version": package_version(), "created": created})
    with h5py.File(tmp, "r+") as dst:
        appender = CacheAppender(dst)
        for file in journal:
            with h5py.File(file.path, "r") as src:
                appender.add_from(src)
        for image_id in plan.new_ids:
            index, row = plan.holders[image_id][0]
            appender.add_image(sources.get(index), row)
        appender.add_skipped(plan.skipped)
        appender.finish()
        changed = apply_label_updates(dst, label_updates)
        dst.attrs["modified"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    logger.info("%s: merged %d new images from %d shard files", out, len(plan.new_ids), len(shard_files))
    return changed
