"""The journal of a cell cache: finished images waiting to be merged into the main file.

Beside `cells.h5`, a running (or killed) writer keeps the folder `cells.h5.journal/`. Each finished image,
or skipped image, is one *shard* there: a one-image cache of the same layout (`hpa_cells.cache.schema`) named
`NNNNNNNN.h5`, NNNNNNNN being its sequence number and so its merge order. A shard is written as
`NNNNNNNN.h5.part`, fsync'ed, then renamed to its final name, and the rename is made durable by fsync'ing the
folder: a shard that was not finished never exists under its final name. A merge in progress writes
`cells.h5.tmp`. The writer (`hpa_cells.cache.writer`) writes, merges and deletes shards; the reader only
lists them, to warn that some images are not merged yet.

Shards and the merged file are not written through `hpa_cells.atomic_files`: their temporary names
(`*.h5.part`, `cells.h5.tmp`) are part of the on-disk contract (the next writer recognises and removes them,
and journals left by older runs use them), and both need the folder fsync after the rename, which
`atomic_output` does not do.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import h5py

from hpa_cells.cache.schema import LIBVER

__all__ = [
    "PART_SUFFIX",
    "SHARD_NAME",
    "delete_shards",
    "fsync_dir",
    "fsync_file",
    "journal_dir_of",
    "journal_shards",
    "merge_tmp_path_of",
    "next_sequence",
    "unfinished_shards",
    "write_shard",
]

SHARD_NAME = re.compile(r"^(\d{8})\.h5$")
PART_SUFFIX = ".part"


def journal_dir_of(path: Path) -> Path:
    """The journal folder of cache `path` (`cells.h5` -> `cells.h5.journal`)."""
    return path.with_name(path.name + ".journal")


def merge_tmp_path_of(path: Path) -> Path:
    """The file a merge into cache `path` writes before renaming it over `path` (`cells.h5` -> `cells.h5.tmp`)."""
    return path.with_name(path.name + ".tmp")


def journal_shards(journal_dir: Path) -> list[Path]:
    """Finished shard files of a journal, in merge (sequence) order."""
    if not journal_dir.is_dir():
        return []
    return sorted(p for p in journal_dir.iterdir() if SHARD_NAME.match(p.name))


def unfinished_shards(journal_dir: Path) -> list[Path]:
    """Shards a killed writer left half-written (`*.part`), sorted by name."""
    if not journal_dir.is_dir():
        return []
    return sorted(journal_dir.glob("*" + PART_SUFFIX))


def next_sequence(shards: list[Path]) -> int:
    """The sequence number after the last of `shards` (as listed by journal_shards); 0 for none."""
    if not shards:
        return 0
    match = SHARD_NAME.match(shards[-1].name)
    assert match is not None, f"{shards[-1]} is not a finished shard"
    return int(match.group(1)) + 1


def fsync_file(path: Path) -> None:
    """Flush a closed file's data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make renames and deletions inside a folder durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_shard(journal_dir: Path, sequence: int, fill: Callable[[h5py.File], None]) -> Path:
    """Write shard number `sequence`: `fill` writes the contents into a new HDF5 file under the `.part` name,
    which is fsync'ed and atomically renamed to its final name. Creates the journal folder if needed; an
    exception removes the `.part` file. Returns the final path."""
    if not journal_dir.is_dir():
        journal_dir.mkdir(parents=True)
        fsync_dir(journal_dir.parent)
    final = journal_dir / f"{sequence:08d}.h5"
    part = final.with_name(final.name + PART_SUFFIX)
    try:
        with h5py.File(part, "w", libver=LIBVER) as f:
            fill(f)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    fsync_file(part)
    os.replace(part, final)
    fsync_dir(journal_dir)
    return final


def delete_shards(journal_dir: Path, shards: list[Path]) -> None:
    """Remove merged shards, and the journal folder once empty; fsync the folder holding it."""
    for shard in shards:
        shard.unlink(missing_ok=True)
    if journal_dir.is_dir() and not any(journal_dir.iterdir()):
        journal_dir.rmdir()
    fsync_dir(journal_dir.parent)
