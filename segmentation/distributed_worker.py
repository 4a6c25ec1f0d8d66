"""What a Dask worker does for `segment.py --scheduler`: segment one chunk of fields into its own shard cache.

The client (`segmentation.distributed`) sends settings, never models: a `ChunkTask` holds the job, a picklable
factory that builds the segmenter (e.g. `functools.partial(build_segmenter, options)`), the chunk's field ids
with their files, and their labels. Each worker process builds its segmenter once, on first use, and keeps it for
the chunks that follow (`_WorkerSegmenters`).

A chunk is written with the ordinary crash-safe `CellCacheWriter` into its own shard cache
`OUT.shards/RUN-CHUNK-HOST-PID.h5`: the name is unique per chunk and per worker process, so no two processes ever
write one file (on one machine or several sharing the folder), and the writer's lock guards it besides. When a
worker dies, the scheduler gives its chunk to another worker; that attempt first reads the shards of earlier
attempts of the same chunk (`RUN-CHUNK-*`, their journals included) and segments only the fields they did not
finish. After each field the worker logs a progress event (`PROGRESS_TOPIC`) that the client's progress bar counts.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hpa_cells.cache.shards import CacheContents, cache_contents, shard_caches_in, shards_dir_of
from hpa_cells.images import FolderScan
from segmentation.result import Segmenter
from segmentation.segment_to_cache import (
    QC_FLAG_NAMES,
    SegmentJob,
    SegmentRunSummary,
    cache_provenance,
    segment_fields,
)

__all__ = ["PROGRESS_TOPIC", "ChunkResult", "ChunkTask", "WorkerSettings", "segment_chunk", "segmenter_device",
           "segmenter_device_line", "worker_settings"]

logger = logging.getLogger(__name__)

PROGRESS_TOPIC = "hpa-cells-segment-field-done"
"""The Dask event topic of per-field progress (the message is the field id)."""


@dataclass(frozen=True)
class ChunkTask:
    """One chunk of a distributed run: segment `ids` (planned by the client, in order) into a new shard cache."""

    job: SegmentJob
    make_segmenter: Callable[[], Segmenter]
    name: str
    """RUN-CHUNK: unique to the run and the chunk; the shard adds the worker's HOST-PID."""
    ids: tuple[str, ...]
    scan: FolderScan
    """The folder scan restricted to `ids` (reasons of duplicated channel files as text)."""
    labels: dict[str, list[int]] | None
    torch_threads: int | None = None
    """torch threads per worker process (1 for `local:N`); None leaves the worker's default."""


@dataclass
class ChunkResult:
    """What one chunk did."""

    name: str
    shard: Path | None
    """The shard cache written (None when earlier attempts had finished every field)."""
    summary: SegmentRunSummary
    finished_earlier: int
    """Fields of the chunk that an earlier attempt (on a worker that died) had finished: kept, not redone."""
    worker: str
    device: str
    cpu_seconds: float = 0.0
    """CPU time of the worker process (all its threads) while it ran the chunk."""


@dataclass(frozen=True)
class WorkerSettings:
    """What a worker's segmenter makes: the cache provenance attributes and crop size (to check against the
    caches already there before any work), and the device line of the worker."""

    attrs: dict[str, str]
    crop_size: int
    device: str
    worker: str


def segmenter_device(segmenter: Segmenter) -> str:
    """The torch device a segmenter runs its networks on (its `settings.device`); segmenters without one run on
    the CPU."""
    return str(getattr(getattr(segmenter, "settings", None), "device", "cpu"))


def segmenter_device_line(segmenter: Segmenter) -> str:
    """`hpa_cells.devices.device_line` of the segmenter's device; without importing torch for a segmenter that
    does not use it."""
    device = segmenter_device(segmenter)
    if "torch" not in sys.modules and device == "cpu":
        return "device: cpu"
    from hpa_cells.devices import device_line

    return device_line(device)


class _WorkerSegmenters:
    """This worker process's segmenter, built on first use from the factory the client sent and kept for the
    chunks that follow (loading models once per process); a different factory builds a new one."""

    def __init__(self) -> None:
        self._key: bytes | None = None
        self._segmenter: Segmenter | None = None

    def get(self, make_segmenter: Callable[[], Segmenter], torch_threads: int | None) -> Segmenter:
        key = pickle.dumps(make_segmenter)
        if self._segmenter is None or key != self._key:
            logger.info("worker %d: building the segmenter", os.getpid())
            self._segmenter, self._key = make_segmenter(), key
        if torch_threads and "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(torch_threads)
        return self._segmenter


_SEGMENTERS = _WorkerSegmenters()
"""One per worker process: the models stay loaded between chunks (the only process-wide state here)."""


def _worker_name() -> str:
    """HOST-PID of this process, with characters unsafe in file names replaced."""
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) + f"-{os.getpid()}"


def worker_settings(job: SegmentJob, make_segmenter: Callable[[], Segmenter],
                    torch_threads: int | None = None) -> WorkerSettings:
    """Build (or reuse) this worker's segmenter and say what its caches record and where it runs."""
    segmenter = _SEGMENTERS.get(make_segmenter, torch_threads)
    attrs = cache_provenance(job, segmenter).root_attributes(QC_FLAG_NAMES)
    return WorkerSettings(attrs, job.crop.crop_size, segmenter_device_line(segmenter), _worker_name())


def _progress_reporter() -> Callable[[str], None]:
    """After each field: a Dask event for the client's progress bar (nothing outside a Dask worker)."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except ValueError:  # not running inside a worker (a direct call)
        return lambda image_id: None
    return lambda image_id: worker.log_event(PROGRESS_TOPIC, image_id)


def segment_chunk(task: ChunkTask) -> ChunkResult:
    """Segment the chunk's fields that no earlier attempt finished into this process's own shard cache."""
    cpu_started = time.process_time()
    segmenter = _SEGMENTERS.get(task.make_segmenter, task.torch_threads)
    shards_dir = shards_dir_of(task.job.out_path)
    shards_dir.mkdir(parents=True, exist_ok=True)
    earlier = CacheContents()
    for sibling in shard_caches_in(shards_dir, prefix=task.name + "-"):
        earlier.add(cache_contents(sibling))
    finished = set(earlier.image_ids) | set(earlier.skipped)
    todo = [image_id for image_id in task.ids if image_id not in finished]
    worker = _worker_name()
    shard = shards_dir / f"{task.name}-{worker}.h5" if todo else None
    if shard is not None:
        summary = segment_fields(task.job, segmenter, shard, task.scan, todo, task.labels, _progress_reporter())
    else:
        summary = SegmentRunSummary()
    return ChunkResult(task.name, shard, summary, len(task.ids) - len(todo), worker, segmenter_device_line(segmenter),
                       time.process_time() - cpu_started)
