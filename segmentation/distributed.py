"""Segmentation spread over Dask workers: `segment.py --scheduler local:N | tcp://HOST:PORT` (dask.distributed).

The client (this module) scans the folder and plans like a single-process run, then sends the fields to the
workers in chunks of consecutive ids (`segmentation.distributed_worker`): each worker process builds its own
segmenter from the settings (models are never pickled from the client) and writes each chunk into its own shard
cache with the crash-safe `CellCacheWriter`, in `OUT.shards/`. One progress bar counts the fields done on all
workers. When every chunk is done, the client merges the shards into OUT (`hpa_cells.cache.merging`: identical,
cell for cell, to a single-process run of the same command) and deletes them (`keep_shards` keeps them).

Nothing finished is lost when a worker or the client dies: the scheduler gives a dead worker's chunk to another
worker, which skips the fields the dead one finished; a rerun of the same command plans from OUT *and* the shard
caches left in `OUT.shards/` (journals included), segments only the missing fields, and merges everything.
Before any work, the settings one worker's segmenter records are checked against OUT and the shards already
there, so a changed option fails at once, naming the cache and the setting.

`local:N` starts a `LocalCluster` of N worker processes with one thread each (and one torch thread each), so N
workers on N cores do not fight over them. An address connects to a running scheduler, e.g. one started by
dask-jobqueue on SLURM (README: "Segmenting many fields"); the images folder and OUT must be reachable at the same
paths on every worker (a shared filesystem).
"""

from __future__ import annotations

import logging
import math
import re
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from hpa_cells.cache import CellCacheMismatchError
from hpa_cells.cache.merging import MergeSummary, merge_caches
from hpa_cells.cache.settings import settings_mismatch
from hpa_cells.cache.shards import (
    CacheContents,
    cache_contents,
    cache_settings,
    remove_shard_cache,
    shard_caches_in,
    shards_dir_of,
)
from hpa_cells.images import FolderScan
from segmentation.distributed_worker import (
    PROGRESS_TOPIC,
    ChunkResult,
    ChunkTask,
    WorkerSettings,
    segment_chunk,
    worker_settings,
)
from segmentation.result import Segmenter
from segmentation.segment_to_cache import (
    SegmentJob,
    SegmentRunSummary,
    StrictModeError,
    all_field_ids,
    plan_fields,
    prepare_run,
)

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["DistributedOptions", "DistributedRunError", "DistributedRunSummary", "SchedulerError", "SchedulerSpec",
           "segment_distributed"]

logger = logging.getLogger(__name__)

MAX_AUTO_CHUNK = 32
"""Largest chunk the automatic size picks: a chunk's fields are lost to the progress bar until they are done."""
CHUNKS_PER_WORKER = 4
"""The automatic chunk size aims at this many chunks per worker (so fast workers take more)."""
LOCAL_WORKER_CONFIG = {
    # Dask's defaults for worker processes cost segmentation about a third more CPU per field (benchmarks/
    # bench_dask.py, measured on 2 cores): glibc told to return freed memory at once (MALLOC_TRIM_THRESHOLD_=65536:
    # every large array of every field is mapped and zeroed anew) and a sampling profiler in every worker.
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
    "distributed.worker.profile.enabled": False,
}
"""Dask settings for the workers of `local:N` (README: the same for workers started elsewhere)."""
SCHEDULER_CHOICES_TEXT = "local:N (N worker processes on this machine) or a scheduler address such as tcp://HOST:8786"
_LOCAL = re.compile(r"^local:(\d+)$")
_ADDRESS = re.compile(r"^(tcp|tls|ucx|inproc)://\S+$")


class SchedulerError(RuntimeError):
    """The Dask scheduler cannot be reached (or started), or has no worker."""


class DistributedRunError(RuntimeError):
    """A chunk failed on the workers; the fields finished so far are kept in the shard caches."""


@dataclass(frozen=True)
class SchedulerSpec:
    """`local:N` (a LocalCluster of N single-thread worker processes) or a scheduler address."""

    text: str
    local_workers: int | None = None
    address: str | None = None

    @classmethod
    def parse(cls, text: str) -> SchedulerSpec:
        """ValueError naming the text unless it is local:N with N >= 1 or a tcp://, tls://, ucx:// address."""
        local = _LOCAL.match(text.strip())
        if local is not None and int(local.group(1)) >= 1:
            return cls(text.strip(), local_workers=int(local.group(1)))
        if local is None and _ADDRESS.match(text.strip()):
            return cls(text.strip(), address=text.strip())
        raise ValueError(f"expected {SCHEDULER_CHOICES_TEXT}, got {text!r}")


@dataclass(frozen=True)
class DistributedOptions:
    """How a run is spread: the scheduler, fields per chunk (None: automatic), what happens to the shards."""

    scheduler: SchedulerSpec
    chunk_size: int | None = None
    keep_shards: bool = False
    connect_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")
        if not self.connect_timeout_s > 0:
            raise ValueError(f"connect_timeout_s must be > 0, got {self.connect_timeout_s}")


@dataclass
class DistributedRunSummary:
    """A distributed run: the usual run summary (over all workers) and what the workers and the merge did."""

    run: SegmentRunSummary
    scheduler: str
    workers: int
    chunks: int = 0
    finished_earlier: int = 0
    """Fields finished by a worker that died during this run (kept, not redone; not in `run.images_done`)."""
    devices: dict[str, str] = field(default_factory=dict)
    """Worker (HOST-PID) -> its device line."""
    merge: MergeSummary | None = None
    shards_dir: Path | None = None
    shards_kept: bool = False
    startup_seconds: float = 0.0
    """Connecting (starting a local cluster) and building a first worker's segmenter."""
    segment_seconds: float = 0.0
    """Planning and running the chunks on the workers."""
    worker_cpu_seconds: float = 0.0
    """CPU time the worker processes spent on the chunks (all their threads)."""

    def lines(self) -> list[str]:
        out = self.run.lines()
        merge_s = self.merge.seconds if self.merge is not None else 0.0
        out.append(f"workers: {self.workers} ({self.scheduler}); {self.chunks} chunk(s); "
                   f"{self.run.images_per_second:.2f} fields/s over the whole run (start-up "
                   f"{self.startup_seconds:.1f} s, segmenting {self.segment_seconds:.1f} s, merge {merge_s:.1f} s)")
        if self.finished_earlier:
            out.append(f"{self.finished_earlier} field(s) finished by a worker that died were kept, not redone")
        for line, count in sorted(Counter(self.devices.values()).items()):
            out.append(f"{line} on {count} worker{'s' if count != 1 else ''}")
        if self.merge is not None:  # its label count is in the run's lines already
            out.extend(line for line in self.merge.lines() if not line.startswith("labels changed"))
        if self.shards_dir is not None:
            out.append(f"shard caches kept in {self.shards_dir}" if self.shards_kept
                       else f"shard caches removed from {self.shards_dir}")
        return out


def start_local_cluster(workers: int):
    """A LocalCluster of `workers` processes with one thread each, one thread for every math library, and the
    worker settings of LOCAL_WORKER_CONFIG (what `local:N` starts; close it when done)."""
    import dask
    from dask.distributed import LocalCluster

    with dask.config.set(LOCAL_WORKER_CONFIG):  # read by each nanny when it starts
        return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                            silence_logs=logging.ERROR,
                            env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"})


@contextmanager
def connect(options: DistributedOptions) -> Iterator[Client]:
    """A client of the scheduler the options name (a LocalCluster started here for local:N, closed on leaving);
    SchedulerError when it cannot be reached or has no worker within `connect_timeout_s`."""
    from dask.distributed import Client

    spec, cluster = options.scheduler, None
    try:
        if spec.local_workers is not None:
            cluster = start_local_cluster(spec.local_workers)
            client = Client(cluster, timeout=options.connect_timeout_s)
        else:
            client = Client(spec.address, timeout=options.connect_timeout_s)
    except (OSError, TimeoutError) as error:
        if cluster is not None:
            cluster.close()
        raise SchedulerError(f"cannot reach the Dask scheduler at {spec.text} within {options.connect_timeout_s:g} s "
                             f"({type(error).__name__}: {' '.join(str(error).split())})") from error
    try:
        try:
            client.wait_for_workers(1, timeout=options.connect_timeout_s)
        except TimeoutError as error:
            raise SchedulerError(f"the Dask scheduler at {spec.text} has no worker after "
                                 f"{options.connect_timeout_s:g} s; start workers (dask worker {spec.text})") from error
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _workers_settings(client: Client, job: SegmentJob, make_segmenter: Callable[[], Segmenter],
                      threads: int | None) -> list[WorkerSettings]:
    """Build the segmenter on every worker now (in parallel, before any chunk) and check that they all record the
    same settings (a worker with other model files would make shards that cannot be merged); each worker's."""
    found = client.run(worker_settings, job, make_segmenter, threads)
    if not found:
        raise SchedulerError("the Dask scheduler lost its workers while they were starting")
    settings = list(found.values())
    for other in settings[1:]:
        why = settings_mismatch(settings[0].attrs, settings[0].crop_size, other.attrs, other.crop_size,
                                first=f"on worker {settings[0].worker}", second=f"on worker {other.worker}")
        if why is not None:
            raise CellCacheMismatchError(f"the workers' segmenters differ: {why}; give every worker the same "
                                         "models and software")
    return settings


def _check_caches(out: Path, shards: Sequence[Path], settings: WorkerSettings) -> None:
    """Refuse, before any work, when OUT or a shard already there was made with other settings than this run."""
    for path in (out, *shards):
        found = cache_settings(path)
        if found is None:
            continue
        why = settings_mismatch(found[0], found[1], settings.attrs, settings.crop_size, first=f"in {path}",
                                second="in this command")
        if why is not None:
            fix = "delete that shard cache" if path != out else "use another --out"
            raise CellCacheMismatchError(f"{path} was made with other settings than this command: {why}; rerun "
                                         f"with the same options, or {fix}")


def _plan(job: SegmentJob, scan: FolderScan, shards: Sequence[Path], summary: SegmentRunSummary) -> list[str]:
    """The fields to segment now, as a single process would plan them from OUT plus every shard cache."""
    done = CacheContents()
    for path in (job.out_path, *shards):
        done.add(cache_contents(path))
    return plan_fields(job, scan, all_field_ids(scan), set(done.image_ids), done.skipped, summary)


def _chunk_scan(scan: FolderScan, ids: Sequence[str]) -> FolderScan:
    """The folder scan restricted to `ids` (small to send; duplicated-file errors as their text)."""
    return FolderScan(folder=scan.folder, complete={i: scan.complete[i] for i in ids if i in scan.complete},
                      incomplete={i: scan.incomplete[i] for i in ids if i in scan.incomplete}, ignored=(),
                      duplicated={i: str(scan.duplicated[i]) for i in ids if i in scan.duplicated},
                      sample_files={i: scan.sample_files.get(i, ()) for i in ids})


def _chunk_tasks(job: SegmentJob, make_segmenter: Callable[[], Segmenter], scan: FolderScan, labels: dict | None,
                 todo: Sequence[str], size: int, torch_threads: int | None) -> list[ChunkTask]:
    """Consecutive runs of `size` planned ids, each a task named RUN-CHUNK (RUN: this run's UTC time stamp and a
    random tag, so names sort by run and never meet an earlier run's)."""
    run = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + secrets.token_hex(2)
    tasks = []
    for number, start in enumerate(range(0, len(todo), size)):
        ids = tuple(todo[start:start + size])
        chunk_labels = None if labels is None else {i: list(labels[i]) for i in ids if i in labels}
        tasks.append(ChunkTask(job, make_segmenter, f"{run}-{number:05d}", ids, _chunk_scan(scan, ids),
                               chunk_labels, torch_threads))
    return tasks


class _FieldProgress:
    """One tqdm bar over all workers: distinct fields done, from the workers' events and finished chunks."""

    def __init__(self, total: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc="segment", unit="field")
        self._done: set[str] = set()
        self._lock = threading.Lock()

    def count(self, ids: Sequence[str]) -> None:
        with self._lock:
            new = [image_id for image_id in ids if image_id not in self._done]
            self._done.update(new)
            self.bar.update(len(new))

    def on_event(self, event: tuple[float, object]) -> None:
        self.count([str(event[1])])


def _failure(task: ChunkTask, error: BaseException, shards_dir: Path) -> BaseException:
    """The error a failed chunk raises on the client (a --strict stop stays a StrictModeError)."""
    if isinstance(error, StrictModeError):
        return error
    text = " ".join(str(error).split()) or "(no message)"
    return DistributedRunError(
        f"chunk {task.name} ({len(task.ids)} fields, {task.ids[0]} .. {task.ids[-1]}) failed: {type(error).__name__}: "
        f"{text}; the fields finished so far are kept in {shards_dir}: rerun the same command to continue")


def _run_tasks(client: Client, tasks: Sequence[ChunkTask], total: int, shards_dir: Path) -> list[ChunkResult]:
    """Run the chunks on the workers with one progress bar; the first failing chunk stops the run (the others
    are cancelled; what they finished stays in their shards)."""
    from dask.distributed import as_completed

    progress = _FieldProgress(total)
    client.subscribe_topic(PROGRESS_TOPIC, progress.on_event)
    futures = {client.submit(segment_chunk, task, key=f"segment-chunk-{task.name}", pure=False): task
               for task in tasks}
    results = []
    try:
        with progress.bar:
            for future in as_completed(futures):
                task = futures[future]
                if future.status == "error":
                    raise _failure(task, future.exception(), shards_dir)
                results.append(future.result())
                progress.count(task.ids)
    finally:
        client.cancel(list(futures))
        client.unsubscribe_topic(PROGRESS_TOPIC)
    return results


def _chunk_size(options: DistributedOptions, todo: int, workers: int) -> int:
    if options.chunk_size is not None:
        return options.chunk_size
    return max(1, min(MAX_AUTO_CHUNK, math.ceil(todo / (CHUNKS_PER_WORKER * max(1, workers)))))


def segment_distributed(job: SegmentJob, make_segmenter: Callable[[], Segmenter],
                        options: DistributedOptions) -> DistributedRunSummary:
    """Segment the job's folder on the Dask workers, merge their shard caches into `job.out_path` and return the
    run's summary (see the module docstring). `make_segmenter` is called on every worker (picklable: a function or
    a `functools.partial` of settings). Raises SchedulerError, CellCacheMismatchError (settings that differ from
    OUT or its shards), StrictModeError (`job.strict`), DistributedRunError (a chunk failed)."""
    started = time.time()
    scan, labels, summary = prepare_run(job)
    shards_dir = shards_dir_of(job.out_path)
    threads = 1 if options.scheduler.local_workers is not None else None
    with connect(options) as client:
        workers = len(client.nthreads())
        every = _workers_settings(client, job, make_segmenter, threads)
        settings, ready = every[0], time.time()
        _check_caches(job.out_path, shard_caches_in(shards_dir), settings)
        todo = _plan(job, scan, shard_caches_in(shards_dir), summary)
        tasks = _chunk_tasks(job, make_segmenter, scan, labels, todo, _chunk_size(options, len(todo), workers),
                             threads)
        logger.info("%d fields to segment in %d chunks on %d workers", len(todo), len(tasks), workers)
        results = _run_tasks(client, tasks, len(todo), shards_dir) if tasks else []
        segmented = time.time()
    report = DistributedRunSummary(summary, options.scheduler.text, workers, chunks=len(tasks),
                                   devices={s.worker: s.device for s in every}, startup_seconds=ready - started,
                                   segment_seconds=segmented - ready)
    for result in results:
        summary.add(result.summary)
        report.finished_earlier += result.finished_earlier
        report.worker_cpu_seconds += result.cpu_seconds
        report.devices[result.worker] = result.device
    shards = shard_caches_in(shards_dir)
    if shards or (labels is not None and job.out_path.exists()):  # labels: updated on the images already there
        report.merge = merge_caches(job.out_path, shards, labels=labels, foreign_locks_ok=True)
        summary.labels_changed = report.merge.labels_changed
    if shards:
        report.shards_dir, report.shards_kept = shards_dir, options.keep_shards
        if not options.keep_shards:
            _remove_shards(shards_dir, shards)
    summary.seconds = time.time() - started
    return report


def _remove_shards(shards_dir: Path, shards: Sequence[Path]) -> None:
    """Delete merged shard caches, and their folder once empty."""
    for shard in shards:
        remove_shard_cache(shard)
    if shards_dir.is_dir() and not any(shards_dir.iterdir()):
        shards_dir.rmdir()

