"""Shard caches: ordinary cell caches that each hold part of a folder's fields, to be merged into one cache.

A run spread over processes or machines (`segment.py --shard I/N`, `segment.py --scheduler ...`) writes each
part into its own cache with the usual crash-safe `CellCacheWriter` (one writer per file), in the folder
`cells.h5.shards/` beside the final cache `cells.h5`; `hpa_cells.cache.merging` merges them. A shard cache is
read here as a writer would resume it: its main file (if any) then its journal's finished shards in order, so a
shard whose writer was killed still counts with every field it finished.

Names inside `cells.h5.shards/`: `shard-I-of-N.h5` (job arrays, `--shard I/N`) and
`RUN-CHUNK-HOST-PID.h5` (Dask: run time stamp, chunk number, the worker's host and pid), each possibly with its
`.journal/` folder and `.lock` file while written or after a kill.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path

import h5py

from hpa_cells.cache.journal import journal_dir_of, journal_shards, merge_tmp_path_of
from hpa_cells.cache.lock import lock_path_of, pid_alive
from hpa_cells.cache.schema import (
    CellCacheError,
    CellCacheLockedError,
    provenance_attrs,
    read_skipped,
    read_strings,
)

__all__ = [
    "SHARDS_SUFFIX",
    "CacheContents",
    "cache_contents",
    "cache_files",
    "cache_settings",
    "check_not_being_written",
    "remove_shard_cache",
    "shard_caches_in",
    "shards_dir_of",
]

logger = logging.getLogger(__name__)

SHARDS_SUFFIX = ".shards"
JOURNAL_SUFFIX = ".journal"


def shards_dir_of(path: Path) -> Path:
    """The folder of the shard caches of final cache `path` (`cells.h5` -> `cells.h5.shards`)."""
    return path.with_name(path.name + SHARDS_SUFFIX)


def shard_caches_in(folder: Path, prefix: str = "") -> list[Path]:
    """The shard caches in `folder` whose names start with `prefix`, sorted by name: every `*.h5` file, and every
    `*.h5.journal` folder left without its main file (a writer killed before its first close)."""
    if not folder.is_dir():
        return []
    found = set()
    for entry in folder.iterdir():
        if not entry.name.startswith(prefix):
            continue
        if entry.is_file() and entry.suffix == ".h5":
            found.add(entry)
        elif entry.is_dir() and entry.name.endswith(".h5" + JOURNAL_SUFFIX):
            found.add(entry.with_name(entry.name.removesuffix(JOURNAL_SUFFIX)))
    return sorted(found)


def cache_files(path: Path) -> list[Path]:
    """The readable files of cache `path` in merge order: its main file (if any), then its journal's finished
    shards (unfinished `.part` files are never read)."""
    main = [path] if path.is_file() else []
    return main + journal_shards(journal_dir_of(path))


@dataclass
class CacheContents:
    """What a cache holds, its journal included: the ids with cells, in order, and the skipped rows (id -> (reason,
    files JSON), a later row of an id replacing an earlier one); an id with cells has no skipped row."""

    image_ids: list[str] = field(default_factory=list)
    skipped: dict[str, tuple[str, str]] = field(default_factory=dict)

    def add(self, other: CacheContents) -> None:
        """Fold in a later file's contents (its skipped rows replace earlier ones; cells win over skips)."""
        known = set(self.image_ids)
        for image_id in other.image_ids:
            if image_id not in known:
                self.image_ids.append(image_id)
                known.add(image_id)
            self.skipped.pop(image_id, None)
        for image_id, row in other.skipped.items():
            if image_id not in known:
                self.skipped[image_id] = row


def cache_contents(path: Path) -> CacheContents:
    """What cache `path` holds, read only (main file and journal, as its writer would merge them); an empty
    `CacheContents` when neither exists. Raises CellCacheError naming a file that cannot be read."""
    contents = CacheContents()
    for file in cache_files(path):
        try:
            with h5py.File(file, "r") as f:
                contents.add(CacheContents(read_strings(f["images/id"]), read_skipped(f)))
        except (OSError, KeyError) as error:
            raise CellCacheError(f"{file} cannot be read as a cell cache ({error}); move it away and rerun") from error
    return contents


def cache_settings(path: Path) -> tuple[dict[str, str], int] | None:
    """(provenance root attributes, crop size) of cache `path` (its main file, else its first journal shard), or
    None when neither exists."""
    files = cache_files(path)
    if not files:
        return None
    try:
        with h5py.File(files[0], "r") as f:
            return provenance_attrs(f), int(f.attrs["crop_size"])
    except (OSError, KeyError) as error:
        raise CellCacheError(f"{files[0]} cannot be read as a cell cache ({error}); move it away and rerun") from error


def check_not_being_written(path: Path, *, foreign_ok: bool = False) -> None:
    """Raise CellCacheLockedError when cache `path` may still be written: its lock names a live process on this
    host, or (unless `foreign_ok`) any process on another host (whose pid cannot be checked from here). A lock
    left by a dead process is fine: the cache holds what its writer finished."""
    lock = lock_path_of(path)
    try:
        pid_text, _, host = lock.read_text().strip().partition("@")
    except FileNotFoundError:
        return
    if not pid_text.isdigit():
        return  # a writer killed while creating its lock wrote nothing after it
    pid = int(pid_text)
    if host == socket.gethostname():
        if pid != os.getpid() and pid_alive(pid):
            raise CellCacheLockedError(f"{path} is being written by running process {pid} (its lock {lock}); wait "
                                       "for it to finish, then merge")
        return
    if not foreign_ok:
        raise CellCacheLockedError(f"{path} is locked by pid {pid} on host {host!r} ({lock}); if no writer runs "
                                   "there any more, delete the lock file and merge again")
    logger.warning("%s: ignoring the lock of pid %d on host %r (its task is over)", path, pid, host)


def remove_shard_cache(path: Path) -> None:
    """Delete shard cache `path` with its journal, lock and merge leftovers (after it was merged)."""
    shutil.rmtree(journal_dir_of(path), ignore_errors=True)
    for file in (path, lock_path_of(path), merge_tmp_path_of(path)):
        file.unlink(missing_ok=True)
