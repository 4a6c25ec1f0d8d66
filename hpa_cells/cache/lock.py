"""The writer's lock file: one writer per cache, and a lock left by a killed writer is taken over.

`cells.h5.lock` is created with O_EXCL and holds `pid@host` (fsync'ed before the writer goes on). A second
writer finding it raises `CellCacheLockedError` naming the holder, unless the holder is provably gone:
its pid is dead on this host, or the file has held unreadable content (a writer killed between creating
and filling it) for more than `STALE_EMPTY_LOCK_S` seconds. A lock held from another host is never taken
over (its pid cannot be checked from here).

The lock file is created in place with O_EXCL rather than written to a temporary file and renamed
(`hpa_cells.atomic_files`): the exclusive create is what makes it a lock, and a rename would silently
replace another writer's lock.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path

from hpa_cells.cache.schema import CellCacheError, CellCacheLockedError

__all__ = ["STALE_EMPTY_LOCK_S", "CacheLock", "lock_path_of", "pid_alive"]

logger = logging.getLogger(__name__)

# A lock file without a readable `pid@host` older than this is left by a writer killed while creating it.
STALE_EMPTY_LOCK_S = 60.0


def lock_path_of(path: Path) -> Path:
    """The lock file of cache `path` (`cells.h5` -> `cells.h5.lock`)."""
    return path.with_name(path.name + ".lock")


def pid_alive(pid: int) -> bool:
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
        if pid_alive(pid):
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
            except OSError as error:  # read-only folder or disk, no permission, disk full
                raise CellCacheError(
                    f"cannot create the lock file {self.lock_path} ({error.strerror or error}): adding to a cache "
                    f"needs a writable folder; the cache can still be read"
                ) from error
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
