"""Segment a folder of HPA fields and write every cell into the HDF5 cell cache (the `segment.py` job).

Resumable: images already in the cache (or its journal) are skipped, so rerunning the same command after a
crash or Ctrl-C continues where it stopped. One bad field never stops the run: any failure while reading,
segmenting, post-processing or cropping a field (unreadable or missing channel files, a channel in two formats,
a field too small to segment, no cells found, ...) is recorded in the cache's `skipped` table with the reason and
the field's files (size and mtime), and the run goes on (`strict` stops at it instead). A skipped field is tried
again on a later run when its files changed, or always with `retry_skipped`; if it then yields cells it leaves
the skipped table. Only the cache's own failures (disk full, a locked cache) stop a run.
Reading the next batch overlaps with segmenting the current one (a background thread). A segmenter with
post-processing worker processes (`CellposeSegmenter(postprocess_workers=N)`) is fed batch after batch through its
`segment_stream`, so its network passes, its workers' per-field CPU work and the cropping and writing here overlap;
cropping and writing stay in this process, the cache's single writer. The cache is the same either way.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hpa_cells.cache import CacheProvenance, CellCacheInputError, CellCacheWriter
from hpa_cells.crops import CropConfig, extract_cell_crops
from hpa_cells.images import (
    AUTO_WORKING_SIZE_RULE,
    SCALINGS,
    FolderScan,
    ImageReadError,
    auto_working_size,
    files_fingerprint,
    read_sample_files,
    resize_image,
    resize_mask,
    scan_folder,
    write_label_mask,
)
from hpa_cells.labels import match_labels_to_images, read_labels, to_multi_hot
from hpa_cells.qc_flags import QC_FLAG_BITS, names_of_bits
from segmentation.result import SegmentationResult, Segmenter

logger = logging.getLogger(__name__)

QC_FLAG_NAMES = QC_FLAG_BITS
"""The `{name: bit}` table written into every cache (`hpa_cells.qc_flags.QC_FLAG_BITS`)."""


class StrictModeError(RuntimeError):
    """Raised in strict mode at the first image that would otherwise be skipped."""


@dataclass
class SegmentRunSummary:
    """What one run did (the cache holds the cumulative result)."""

    images_found: int = 0
    images_already_done: int = 0
    """Fields already in the cache with cells (not segmented again)."""
    images_done: int = 0
    skipped: dict[str, str] = field(default_factory=dict)
    """Fields skipped by this run: id -> reason."""
    skipped_earlier: int = 0
    """Fields skipped by an earlier run and not retried (files unchanged, no `retry_skipped`)."""
    retried: int = 0
    """Fields skipped earlier and tried again now (files changed, or `retry_skipped`)."""
    dim_16_bit: dict[str, tuple[str, int]] = field(default_factory=dict)
    """Fields with a 16-bit channel holding 12-bit data (max <= 4095) read with full_range: id -> (file, max)."""
    labels_changed: int | None = None
    """Images already in the cache whose stored labels the run's label file changed (None: no label file)."""
    cells_kept: int = 0
    cells_flagged: Counter = field(default_factory=Counter)
    cells_per_image: list[int] = field(default_factory=list)
    seconds: float = 0.0
    labels_without_images: int = 0
    images_without_labels: int = 0
    working_sizes: Counter = field(default_factory=Counter)
    """(original H, W, working H, W) -> images segmented now at that working size."""

    def add(self, part: SegmentRunSummary) -> None:
        """Fold in the work of one part of this run (a Dask worker's chunk): fields segmented and skipped, cells,
        working sizes, dim 16-bit fields. The counts made while planning (found, already done, ...) stay."""
        self.images_done += part.images_done
        self.skipped.update(part.skipped)
        for image_id, found in part.dim_16_bit.items():
            self.dim_16_bit.setdefault(image_id, found)
        self.cells_kept += part.cells_kept
        self.cells_flagged.update(part.cells_flagged)
        self.cells_per_image.extend(part.cells_per_image)
        self.working_sizes.update(part.working_sizes)

    @property
    def images_per_second(self) -> float:
        return self.images_done / self.seconds if self.seconds else 0.0

    def lines(self) -> list[str]:
        counts = np.asarray(self.cells_per_image or [0])
        earlier = (f"; skipped earlier, not retried: {self.skipped_earlier} (files unchanged; --retry-skipped "
                   "retries them)" if self.skipped_earlier else "")
        out = [
            f"images found: {self.images_found}; already in the cache: {self.images_already_done}; "
            f"segmented now: {self.images_done}; skipped now: {len(self.skipped)}{earlier}",
            f"cells kept: {self.cells_kept}; cells per image min/median/max: "
            f"{counts.min()}/{int(np.median(counts))}/{counts.max()}",
            "cells flagged: " + (", ".join(f"{k} {v}" for k, v in sorted(self.cells_flagged.items())) or "none"),
            f"time: {self.seconds:.1f} s ({self.images_per_second:.2f} images/s, "
            f"{self.cells_kept / self.seconds if self.seconds else 0:.1f} cells/s)",
        ]
        if self.working_sizes:
            out.append("working size: " + ", ".join(
                f"{h}x{w} -> {wh}x{ww} ({n} image{'s' if n != 1 else ''})"
                for (h, w, wh, ww), n in sorted(self.working_sizes.items())))
        if self.retried:
            out.append(f"retried {self.retried} field(s) skipped earlier")
        if self.labels_changed is not None:
            out.append(f"labels changed for {self.labels_changed} image(s) already in the cache")
        if self.dim_16_bit:
            first = next(iter(self.dim_16_bit.items()))
            out.append(f"12-bit data in 16-bit files: {len(self.dim_16_bit)} field(s), e.g. {first[0]} "
                       f"({first[1][0]}, max {first[1][1]}); --scaling per_image_max stretches each channel")
        if self.labels_without_images or self.images_without_labels:
            out.append(f"labels without images: {self.labels_without_images}; "
                       f"images without labels: {self.images_without_labels}")
        for image_id, reason in list(self.skipped.items())[:10]:
            out.append(f"  skipped {image_id}: {reason}")
        if len(self.skipped) > 10:
            out.append(f"  ... and {len(self.skipped) - 10} more (see the cache's skipped table)")
        return out


@dataclass(frozen=True)
class SegmentJob:
    """Inputs and settings of one segment-to-cache run."""

    images_dir: Path
    out_path: Path
    labels_path: Path | None = None
    working_size: int | str = 512
    """Longer side of the fields as segmented, in px, or "auto": each field's own (`auto_working_size`: 512 px
    fields kept, full-resolution 2048/3072 px fields shrunk 4x), so cells have about the same pixel size in every
    layout (the segmenter must then expect fixed object sizes in px: `segment.py` sets Cellpose's diameters)."""
    crop: CropConfig = field(default_factory=CropConfig)
    export_masks_dir: Path | None = None
    limit: int | None = None
    strict: bool = False
    batch_size: int = 8
    retry_skipped: bool = False
    """Try every field skipped earlier again (by default only those whose files changed)."""
    scaling: str = "full_range"
    """Intensity scaling of the channel files (`hpa_cells.images`: full_range or per_image_max)."""

    def __post_init__(self) -> None:
        size = self.working_size
        if size != "auto" and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise ValueError(f"working_size must be a positive int or 'auto', got {size!r}")
        if self.limit is not None and self.limit < 0:
            raise ValueError(f"limit must be >= 0, got {self.limit}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.scaling not in SCALINGS:
            raise ValueError(f"scaling must be one of {SCALINGS}, got {self.scaling!r}")


def _files_text(image_id: str, files: Sequence[Path]) -> str:
    """A field's files in a reason: `X_{red,green,blue,yellow}.png` when they share an extension, else names."""
    suffixes = {Path(p).suffix for p in files}
    if len(files) == 4 and len(suffixes) == 1:
        return f"{image_id}_{{red,green,blue,yellow}}{suffixes.pop()}"
    return ", ".join(Path(p).name for p in files) or "no files"


def _failure(stage: str, image_id: str, files: Sequence[Path], error: BaseException) -> str:
    """The skip reason for an unexpected failure of one field: stage, its files, the error in one line."""
    text = " ".join(str(error).split()) or "(no message)"
    return f"{stage} failed for {_files_text(image_id, files)}: {type(error).__name__}: {text}"


def _read_batch(paths: Sequence[tuple[str, dict]], working_size: int | str, scaling: str = "full_range",
                on_dim_data=None) -> list[tuple[str, np.ndarray | None, tuple[int, int], str]]:
    """Read images (at working size) with their original shapes; any failure becomes a reason string."""
    out = []
    for sample_id, files in paths:
        try:
            image = read_sample_files(files, sample_id=sample_id, size=None, scaling=scaling,
                                      on_dim_data=on_dim_data)
            original = image.shape[1:]
            size = auto_working_size(*original) if working_size == "auto" else working_size
            if max(original) != size:
                image = resize_image(image, size)
            out.append((sample_id, image, original, ""))
        except ImageReadError as err:
            out.append((sample_id, None, (0, 0), f"unreadable: {err}"))
        except Exception as err:  # noqa: BLE001 - one bad field never stops the run
            out.append((sample_id, None, (0, 0), _failure("reading", sample_id, list(files.values()), err)))
    return out


def _batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _one_by_one(segmenter, good: list, skip, files_of: Callable[[str], Sequence[Path]]) -> tuple[list, list]:
    """Segment each image on its own (masks read by id, or after a batch failed); an image that fails is
    skipped with the reason (the run goes on)."""
    from segmentation.mask_folder import MaskFileError

    by_id = getattr(segmenter, "reads_masks_by_id", False)
    kept, results = [], []
    for entry in good:
        image_id, image, _ = entry
        try:
            result = (segmenter.segment_batch([image], image_ids=[image_id]) if by_id
                      else segmenter.segment_batch([image]))[0]
        except MaskFileError as err:
            skip(image_id, str(err))
            continue
        except Exception as err:  # noqa: BLE001 - one bad field never stops the run
            skip(image_id, _failure("segmentation", image_id, files_of(image_id), err))
            continue
        kept.append(entry)
        results.append(result)
    return kept, results


def _without_device(value: object) -> object:
    """A segmenter's provenance without its `device` entries: where the network ran is not part of what the cells
    mean, and caches (or shards) made on a GPU and on CPUs must merge and resume each other; the run summary says
    which device ran (`hpa_cells.devices.device_line`)."""
    if isinstance(value, dict):
        return {key: _without_device(item) for key, item in value.items() if key != "device"}
    return value


def cache_provenance(job: SegmentJob, segmenter: Segmenter) -> CacheProvenance:
    """What the cache records about how its cells were made: segmenter, model checksum, every setting (not the
    device)."""
    provenance = _without_device(segmenter.provenance())
    cell_model = provenance.get("cell_model")
    return CacheProvenance(
        segmenter=segmenter.name,
        model_sha256=str(cell_model.get("sha256", "")) if isinstance(cell_model, dict) else "",
        parameters={**provenance, "working_size": job.working_size, "crop": job.crop.__dict__,
                    "images_dir": str(job.images_dir.resolve()),
                    # recorded only when not the default, so caches made before the option still match
                    **({"scaling": job.scaling} if job.scaling != "full_range" else {}),
                    # each image's own working size is in the cache's images/working_hw
                    **({"working_size_rule": AUTO_WORKING_SIZE_RULE} if job.working_size == "auto" else {})},
    )


def _read_ahead(reader: ThreadPoolExecutor, batches: Sequence[Sequence[tuple[str, dict]]],
                read: Callable[[Sequence[tuple[str, dict]]], list]) -> Iterator[list]:
    """The read batches in order, the next one read in `reader`'s thread while the caller segments this one."""
    pending: Future | None = reader.submit(read, batches[0]) if batches else None
    for index in range(len(batches)):
        loaded = pending.result()
        pending = reader.submit(read, batches[index + 1]) if index + 1 < len(batches) else None
        yield loaded


def _readable(loaded: list, skip: Callable[[str, str], None]) -> list[tuple]:
    """(image_id, image, original shape) of the readable fields of a read batch; the others skipped with their
    reason."""
    for image_id, _, _, reason in loaded:
        if reason:
            skip(image_id, reason)
    return [(i, im, orig) for i, im, orig, reason in loaded if im is not None]


def _segment_loaded(segmenter: Segmenter, loaded: list, skip: Callable[[str, str], None],
                    files_of: Callable[[str], Sequence[Path]], one_by_one: bool = False) -> list[tuple]:
    """((image_id, image, original shape), result) for the readable images of a batch; unreadable ones skipped.
    A batch whose segmentation fails is segmented again image by image, so only the bad field is skipped
    (`one_by_one`: image by image from the start)."""
    good = _readable(loaded, skip)
    if one_by_one or getattr(segmenter, "reads_masks_by_id", False):  # masks made elsewhere: one file per image
        good, results = _one_by_one(segmenter, good, skip, files_of)
    else:
        try:
            results = segmenter.segment_batch([im for _, im, _ in good]) if good else []
        except Exception as err:  # noqa: BLE001 - find the field at fault
            logger.info("segmenting a batch failed (%s); segmenting its %d images one by one", err, len(good))
            good, results = _one_by_one(segmenter, good, skip, files_of)
    return list(zip(good, results, strict=True))


def _streams(segmenter: Segmenter) -> bool:
    """Whether `_run` feeds the segmenter through `segment_stream`: only when worker processes do its per-field CPU
    work, the one thing the stream overlaps with the network passes and the writing here."""
    return callable(getattr(segmenter, "segment_stream", None)) and getattr(segmenter, "postprocess_workers", 0) > 0


def _streamed_results(loaded: list, results: Sequence, segmenter: Segmenter, skip: Callable[[str, str], None],
                      files_of: Callable[[str], Sequence[Path]]) -> list[tuple]:
    """((image_id, image, original shape), result) for one streamed batch: its unreadable fields skipped first (as
    `_segment_loaded` does), then a field whose result is an exception segmented once more on its own, as the
    one-by-one fallback does, so its skip reason is the one a run without workers records."""
    good = _readable(loaded, skip)
    out = []
    for entry, result in zip(good, results, strict=True):
        if isinstance(result, Exception):
            logger.info("segmenting %s failed in the stream (%s); segmenting it on its own", entry[0], result)
            kept, again = _one_by_one(segmenter, [entry], skip, files_of)
            out.extend(zip(kept, again, strict=True))
        else:
            out.append((entry, result))
    return out


def _segment_streamed(segmenter: Segmenter, loaded_batches: Iterator[list], skip: Callable[[str, str], None],
                      files_of: Callable[[str], Sequence[Path]]) -> Iterator[tuple[int, list[tuple]]]:
    """(fields of the batch, its `_segment_loaded` pairs) for each read batch, in order, through the segmenter's
    `segment_stream` (its network passes and workers run ahead of the caller's cropping and writing).

    A failing network pass (or a worker process that died: its workers are then replaced) ends a stream: the batches
    it held are segmented one by one, so only a bad field is skipped, and a new stream takes the rest. Skips are
    recorded here, in the caller's thread, when a batch's results are handed over, never while the stream reads
    ahead."""
    held: deque[list] = deque()  # batches given to the stream whose results have not come back yet

    def feed() -> Iterator[list[np.ndarray]]:
        for loaded in loaded_batches:
            held.append(loaded)
            yield [image for _, image, _, _ in loaded if image is not None]

    stream: Iterator[list] = segmenter.segment_stream(feed(), return_exceptions=True)
    while True:
        try:
            results = next(stream)
        except StopIteration:
            return
        except Exception as err:  # noqa: BLE001 - find the fields at fault
            if not held:
                raise
            logger.info("the segmentation stream failed (%s: %s); segmenting the %d batch(es) in flight one by one",
                        type(err).__name__, err, len(held))
            if isinstance(err, BrokenProcessPool):  # a worker process died: the next call starts new ones
                segmenter.close()
            while held:
                loaded = held.popleft()
                yield len(loaded), _segment_loaded(segmenter, loaded, skip, files_of, one_by_one=True)
            stream = segmenter.segment_stream(feed(), return_exceptions=True)
            continue
        loaded = held.popleft()
        yield len(loaded), _streamed_results(loaded, results, segmenter, skip, files_of)


def _segmented(segmenter: Segmenter, loaded_batches: Iterable[list], skip: Callable[[str, str], None],
               files_of: Callable[[str], Sequence[Path]]) -> Iterator[tuple[int, list[tuple]]]:
    """(fields of the batch, ((image_id, image, original shape), result) pairs) for each read batch, in order:
    streamed when the segmenter has post-processing workers (`_segment_streamed`), else batch by batch."""
    if _streams(segmenter):
        yield from _segment_streamed(segmenter, iter(loaded_batches), skip, files_of)
        return
    for loaded in loaded_batches:
        yield len(loaded), _segment_loaded(segmenter, loaded, skip, files_of)


def _crop_image(job: SegmentJob, labels: dict | None, entry: tuple[str, np.ndarray, tuple[int, int]],
                result: SegmentationResult) -> tuple:
    """The arguments of `CellCacheWriter.add_cell_crops` for one segmented image (post-processing, cropping)."""
    image_id, image, original = entry
    flags = dict(zip(result.qc.cell_id.tolist(), result.qc.flags.tolist(), strict=True))
    crops = extract_cell_crops(image, result.cells, result.nuclei, config=job.crop, qc_flags=flags)
    label_vector = None
    if labels is not None and image_id in labels:
        label_vector = to_multi_hot([labels[image_id]])[0]
    return image_id, crops, result.cells, result.nuclei, tuple(original), label_vector


def _store_image(writer: CellCacheWriter, job: SegmentJob, labels: dict | None, summary: SegmentRunSummary,
                 entry: tuple[str, np.ndarray, tuple[int, int]], result: SegmentationResult,
                 skip: Callable[[str, str], None], files_of: Callable[[str], Sequence[Path]]) -> bool:
    """Crop one segmented image's cells into the cache (and export its masks); count it in `summary`; True when
    stored. A failure while cropping (or data the cache refuses) skips the field; the cache's own errors (disk
    full) propagate."""
    image_id, image, original = entry
    try:
        args = _crop_image(job, labels, entry, result)
    except Exception as err:  # noqa: BLE001 - one bad field never stops the run
        skip(image_id, _failure("cropping", image_id, files_of(image_id), err))
        return False
    try:
        writer.add_cell_crops(*args, image_chw=image)
    except CellCacheInputError as err:  # checked before anything is written
        skip(image_id, _failure("storing", image_id, files_of(image_id), err))
        return False
    crops = args[1]
    if job.export_masks_dir is not None:
        write_label_mask(job.export_masks_dir / f"{image_id}_cells.png", resize_mask(result.cells, tuple(original)))
        write_label_mask(job.export_masks_dir / f"{image_id}_nuclei.png", resize_mask(result.nuclei, tuple(original)))
    summary.images_done += 1
    summary.working_sizes[(*original, *image.shape[1:])] += 1
    summary.cells_kept += len(crops)
    summary.cells_per_image.append(len(crops))
    for value in result.qc.flags.tolist():
        summary.cells_flagged.update(names_of_bits(value))
    return True


def all_field_ids(scan: FolderScan) -> list[str]:
    """Every field id of a folder scan, complete or not, sorted: the order in which fields are segmented."""
    return sorted(set(scan.complete) | set(scan.incomplete) | set(scan.duplicated))


def plan_fields(job: SegmentJob, scan: FolderScan, ids: Sequence[str], cached: Collection[str],
                earlier: Mapping[str, tuple[str, str]], summary: SegmentRunSummary) -> list[str]:
    """The ids among `ids` (sorted) to segment now: new fields, and fields skipped earlier (`earlier`: id -> (reason,
    files fingerprint)) whose files changed (all of them with `retry_skipped`); fields in `cached` (with cells) are
    done. Counts the others in `summary`; at most `job.limit`."""
    todo = []
    for image_id in ids:
        if image_id in cached:
            summary.images_already_done += 1
        elif image_id not in earlier:
            todo.append(image_id)
        elif job.retry_skipped or earlier[image_id][1] != files_fingerprint(scan.sample_files.get(image_id, ())):
            summary.retried += 1
            todo.append(image_id)
        else:
            summary.skipped_earlier += 1
    return todo if job.limit is None else todo[: job.limit]


def _dim_data_hook(summary: SegmentRunSummary) -> Callable[[str, Path, int], None]:
    """Record fields whose 16-bit channels hold 12-bit data; warn once per run, naming the first."""

    def hook(sample_id: str, path: Path, peak: int) -> None:
        if not summary.dim_16_bit:
            logger.warning("%s: 16-bit channel peaks at %d (12-bit data?): with --scaling full_range its values "
                           "become 0-%d of 255; --scaling per_image_max stretches each channel (warned once per run)",
                           path, peak, round(peak / 257))
        summary.dim_16_bit.setdefault(sample_id, (path.name, peak))

    return hook


def _run(job: SegmentJob, segmenter: Segmenter, writer: CellCacheWriter, scan: FolderScan, labels: dict | None,
         summary: SegmentRunSummary, todo: Sequence[str], on_field: Callable[[str], None] | None = None) -> None:
    """Segment the fields `todo` into `writer`, skipping (or, strict, stopping at) bad ones; `on_field(id)` after
    each field is stored or skipped (then no progress bar is shown: the caller shows progress)."""
    from tqdm import tqdm

    def files_of(image_id: str) -> tuple[Path, ...]:
        return scan.sample_files.get(image_id, ())

    def skip(image_id: str, reason: str) -> None:
        if job.strict:
            raise StrictModeError(f"image {image_id!r} in {job.images_dir}: {reason} (--strict stops here; "
                                  f"{summary.images_done} images already written are kept)")
        logger.warning("skipping %s: %s", image_id, reason)
        writer.add_skipped(image_id, reason, files_fingerprint(files_of(image_id)))
        summary.skipped[image_id] = reason
        if on_field is not None:
            on_field(image_id)

    readable = []
    for image_id in todo:
        if image_id in scan.duplicated:
            skip(image_id, f"duplicate channel file: {scan.duplicated[image_id]}")
        elif image_id in scan.incomplete:
            skip(image_id, f"missing channel(s): {', '.join(scan.incomplete[image_id])}")
        else:
            readable.append((image_id, scan.complete[image_id]))
    hook = _dim_data_hook(summary)

    def read(batch: Sequence[tuple[str, dict]]) -> list:
        return _read_batch(batch, job.working_size, job.scaling, hook)

    bar = tqdm(total=len(readable), desc="segment", unit="image", disable=on_field is not None)
    with bar, ThreadPoolExecutor(max_workers=1) as reader:  # the bar closes on errors too
        loaded_batches = _read_ahead(reader, list(_batches(readable, job.batch_size)), read)
        for fields, segmented in _segmented(segmenter, loaded_batches, skip, files_of):
            for entry, result in segmented:  # cropped and written here: this process is the cache's one writer
                if result.n_cells == 0:
                    skip(entry[0], "no cells found")
                    continue
                if _store_image(writer, job, labels, summary, entry, result, skip, files_of) and on_field:
                    on_field(entry[0])
            bar.update(fields)


def prepare_run(job: SegmentJob) -> tuple[FolderScan, dict | None, SegmentRunSummary]:
    """Scan the folder and read the label file (if any): (scan, labels, a summary counting the fields and how the
    labels match them). Creates the mask export folder."""
    summary = SegmentRunSummary()
    scan = scan_folder(job.images_dir, duplicates="report")
    labels = read_labels(job.labels_path) if job.labels_path else None
    all_ids = all_field_ids(scan)
    summary.images_found = len(all_ids)
    if labels is not None:
        match = match_labels_to_images(labels, all_ids)
        summary.labels_without_images = len(match.labels_without_images)
        summary.images_without_labels = len(match.images_without_labels)
    if job.export_masks_dir is not None:
        job.export_masks_dir.mkdir(parents=True, exist_ok=True)
    return scan, labels, summary


def segment_folder(job: SegmentJob, segmenter: Segmenter, *, select: Callable[[str], bool] | None = None,
                   done_in: Sequence[Path] = ()) -> SegmentRunSummary:
    """Run the job; returns this run's summary (progress is shown with tqdm). With a label file, the labels of
    images already in the cache are updated too (`summary.labels_changed`).

    `select` keeps only the fields it accepts (`images_found` counts those: a shard of the folder, see
    `segmentation.sharding`); fields held by the caches `done_in` (read only; e.g. the final cache a shard will
    be merged into) count as already done, like those in `job.out_path`."""
    from hpa_cells.cache.shards import CacheContents, cache_contents

    started = time.time()
    scan, labels, summary = prepare_run(job)
    ids = [i for i in all_field_ids(scan) if select(i)] if select is not None else all_field_ids(scan)
    if select is not None:
        summary.images_found = len(ids)
    elsewhere = CacheContents()
    for path in done_in:
        elsewhere.add(cache_contents(Path(path)))
    with CellCacheWriter(job.out_path, job.crop.crop_size, cache_provenance(job, segmenter), QC_FLAG_NAMES) as writer:
        if labels is not None:
            writer.update_labels(labels)
        earlier = {**elsewhere.skipped, **writer.skipped_records()}
        cached = writer.image_ids_with_cells() | set(elsewhere.image_ids)
        _run(job, segmenter, writer, scan, labels, summary, plan_fields(job, scan, ids, cached, earlier, summary))
    summary.labels_changed = writer.labels_changed
    summary.seconds = time.time() - started
    return summary


def segment_fields(job: SegmentJob, segmenter: Segmenter, out_path: Path, scan: FolderScan, todo: Sequence[str],
                   labels: dict | None, on_field: Callable[[str], None] | None = None) -> SegmentRunSummary:
    """Segment the planned fields `todo` of `scan` into the cache `out_path` (a shard of `job.out_path`: a Dask
    worker's chunk); `on_field(id)` after each. Returns this part's summary (fields, cells, skips, time)."""
    started = time.time()
    summary = SegmentRunSummary()
    with CellCacheWriter(out_path, job.crop.crop_size, cache_provenance(job, segmenter), QC_FLAG_NAMES) as writer:
        _run(job, segmenter, writer, scan, labels, summary, todo, on_field)
    summary.seconds = time.time() - started
    return summary
