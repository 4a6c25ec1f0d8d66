"""Finding samples: which files of a folder are channel images, and which samples are complete."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from hpa_cells.channels import CHANNELS, IMAGE_EXTENSIONS
from hpa_cells.images.errors import DuplicateChannelError, MissingChannelError

__all__ = [
    "FolderScan",
    "files_fingerprint",
    "find_sample_files",
    "missing_channel_error",
    "parse_channel_filename",
    "scan_folder",
]

logger = logging.getLogger(__name__)


def parse_channel_filename(name: str) -> tuple[str, str] | None:
    """'{id}_{channel}.{ext}' -> (id, channel); None when the name does not follow the pattern.

    The id is everything before the last underscore, so ids with underscores and hyphens work
    (the HPA website's `1234_A1_1_red.jpg` is sample `1234_A1_1`). Hidden files (leading '.', e.g. macOS
    `._X_red.png` resource forks) never match, nor do multi-channel composites such as the website's
    `1234_A1_1_blue_red_green.jpg` (an id that itself ends in `_{channel}`).
    """
    dot = name.rfind(".")
    if name.startswith(".") or dot <= 0 or name[dot:].lower() not in IMAGE_EXTENSIONS:
        return None
    sample_id, sep, channel = name[:dot].rpartition("_")
    if not sep or not sample_id or channel not in CHANNELS or sample_id.rpartition("_")[2] in CHANNELS:
        return None
    return sample_id, channel


def _looked_for(sample_id: str, channel: str) -> str:
    """'X_red.png/.jpg/.jpeg/.tif/.tiff': the names a missing channel could have had."""
    return f"{sample_id}_{channel}" + "/".join(IMAGE_EXTENSIONS)


def missing_channel_error(
    folder: Path | None, sample_id: str, missing: tuple[str, ...]
) -> MissingChannelError:
    """The error for a sample lacking `missing` channels, naming the file names looked for in `folder` (if any)."""
    if folder is None:
        parts = [f"missing channel '{channel}' (no path given)" for channel in missing]
    else:
        parts = [
            f"missing channel '{channel}' (looked for {_looked_for(sample_id, channel)} in {folder})"
            for channel in missing
        ]
    return MissingChannelError(f"sample {sample_id}: " + "; ".join(parts), sample_id, missing)


def _duplicate_error(sample_id: str, channel: str, paths: Iterable[Path]) -> DuplicateChannelError:
    first, second = sorted(paths)[:2]
    return DuplicateChannelError(
        f"sample {sample_id}: channel '{channel}' exists in two formats: {first} and {second}; keep one"
    )


def _add_channel_file(found: dict[str, dict[str, Path]], sample_id: str, channel: str, path: Path) -> None:
    channels = found.setdefault(sample_id, {})
    if channel in channels:
        raise _duplicate_error(sample_id, channel, [channels[channel], path])
    channels[channel] = path


def files_fingerprint(paths: Iterable[Path]) -> str:
    """What a sample's files are now, to notice a later change: JSON `{file name: [size, mtime_ns]}` (sorted;
    a file gone since it was listed is `[-1, -1]`). Stored with a skipped field, so a rerun retries it once
    its files changed."""
    out: dict[str, list[int]] = {}
    for path in sorted(Path(p) for p in paths):
        try:
            stat = path.stat()
            out[path.name] = [int(stat.st_size), int(stat.st_mtime_ns)]
        except OSError:
            out[path.name] = [-1, -1]
    return json.dumps(out, sort_keys=True)


def _files_in(folder: Path, prefix: str = "") -> list[Path]:
    """Regular files (or links to them) directly in `folder` whose names start with `prefix`, sorted by name."""
    with os.scandir(folder) as entries:
        names = sorted(entry.name for entry in entries if entry.name.startswith(prefix) and entry.is_file())
    return [folder / name for name in names]


@dataclass(frozen=True)
class FolderScan:
    """What `scan_folder` found: complete samples, incomplete ones, and files that are not channel images.

    `complete`: sample id -> {channel: path} in `CHANNELS` order, ids sorted.
    `incomplete`: sample id -> the channels that are missing, ids sorted.
    `ignored`: files whose names do not match `{id}_{red|green|blue|yellow}.{image extension}` (composites such
        as `{id}_blue_red_green.jpg` included), sorted.
    `duplicated`: (only with `scan_folder(..., duplicates="report")`) sample id -> the error naming a channel
        that exists in two formats; such samples are in neither `complete` nor `incomplete`.
    `sample_files`: sample id -> every channel file found for it (duplicates included), sorted.
    """

    folder: Path
    complete: dict[str, dict[str, Path]]
    incomplete: dict[str, tuple[str, ...]]
    ignored: tuple[Path, ...]
    duplicated: dict[str, DuplicateChannelError] = field(default_factory=dict)
    sample_files: dict[str, tuple[Path, ...]] = field(default_factory=dict)

    @property
    def ids(self) -> list[str]:
        """Sorted ids of the complete samples."""
        return list(self.complete)


def scan_folder(folder: Path, *, duplicates: str = "raise") -> FolderScan:
    """List the samples in a flat folder of channel files (subfolders are not entered).

    Raises `FileNotFoundError` if `folder` is not a directory. When one channel of a sample exists in two
    formats: `duplicates="raise"` raises `DuplicateChannelError`; `"report"` lists that sample in
    `FolderScan.duplicated` (with the error) and goes on, so one such sample does not stop a whole run.
    """
    if duplicates not in ("raise", "report"):
        raise ValueError(f"duplicates must be 'raise' or 'report', got {duplicates!r}")
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist or is not a directory")
    files: dict[str, dict[str, list[Path]]] = {}
    ignored: list[Path] = []
    for path in _files_in(folder):
        parsed = parse_channel_filename(path.name)
        if parsed is None:
            ignored.append(path)
            continue
        files.setdefault(parsed[0], {}).setdefault(parsed[1], []).append(path)
    found: dict[str, dict[str, Path]] = {}
    duplicated: dict[str, DuplicateChannelError] = {}
    for sample_id, channels in files.items():
        twice = sorted(channel for channel, paths in channels.items() if len(paths) > 1)
        if twice:
            error = _duplicate_error(sample_id, twice[0], channels[twice[0]])
            if duplicates == "raise":
                raise error
            duplicated[sample_id] = error
        else:
            found[sample_id] = {channel: paths[0] for channel, paths in channels.items()}
    complete: dict[str, dict[str, Path]] = {}
    incomplete: dict[str, tuple[str, ...]] = {}
    for sample_id in sorted(found):
        channels = found[sample_id]
        missing = tuple(channel for channel in CHANNELS if channel not in channels)
        if missing:
            incomplete[sample_id] = missing
        else:
            complete[sample_id] = {channel: channels[channel] for channel in CHANNELS}
    if incomplete:
        logger.info("%s: %d complete samples, %d incomplete", folder, len(complete), len(incomplete))
    sample_files = {
        sample_id: tuple(sorted(p for paths in channels.values() for p in paths))
        for sample_id, channels in sorted(files.items())
    }
    return FolderScan(folder=folder, complete=complete, incomplete=incomplete, ignored=tuple(ignored),
                      duplicated=dict(sorted(duplicated.items())), sample_files=sample_files)


def find_sample_files(folder: Path, sample_id: str) -> dict[str, Path]:
    """The four channel files of one sample in `folder` (channel -> path, in `CHANNELS` order).

    Lists the folder once; to read many samples from one folder, call `scan_folder` once and
    `read_sample_files` per sample instead. Raises `MissingChannelError` / `DuplicateChannelError`.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist or is not a directory")
    found: dict[str, dict[str, Path]] = {}
    prefix = f"{sample_id}_"
    for path in _files_in(folder, prefix):
        parsed = parse_channel_filename(path.name)
        if parsed is not None and parsed[0] == sample_id:
            _add_channel_file(found, sample_id, parsed[1], path)
    channels = found.get(sample_id, {})
    missing = tuple(channel for channel in CHANNELS if channel not in channels)
    if missing:
        raise missing_channel_error(folder, sample_id, missing)
    return {channel: channels[channel] for channel in CHANNELS}
