"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every output the project writes (CSV/JSON tables, safetensors weights, PNG/TIFF maps, HDF5 files) goes
through `atomic_output`: the writer fills a temporary file beside the target, and only a finished file is
renamed over it (`os.replace`, atomic on POSIX and Windows within one folder). A crash, a full disk or an
exception leaves the previous file intact and removes the temporary one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["atomic_output", "partial_path_of", "write_bytes_atomic", "write_json_atomic", "write_text_atomic"]


def partial_path_of(path: Path) -> Path:
    """The temporary name used while `path` is written: hidden, same folder, same suffix.

    The suffix stays last so that libraries choosing a format by extension (PIL, tifffile, pandas) still do.
    """
    path = Path(path)
    return path.with_name(f".{path.stem}.partial{path.suffix}")


@contextmanager
def atomic_output(path: str | os.PathLike[str], fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; on a clean exit it replaces `path`, on an exception it is removed.

    `fsync=True` flushes the file to disk before the rename (for files whose loss after a power cut matters
    more than the cost, such as checkpoints).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path_of(target)
    try:
        yield partial
        if not partial.exists():
            raise FileNotFoundError(f"nothing was written to {partial} for {target}")
        if fsync:
            with open(partial, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write `data` to `path` atomically; returns the path."""
    with atomic_output(path) as partial:
        partial.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 `text` to `path` atomically; returns the path."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike[str], value: Any, indent: int | None = 2, sort_keys: bool = False,
                      default: Any = None) -> Path:
    """Write `value` as JSON (ending in a newline) to `path` atomically; returns the path."""
    text = json.dumps(value, indent=indent, sort_keys=sort_keys, default=default) + "\n"
    return write_text_atomic(path, text)
