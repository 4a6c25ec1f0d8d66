"""Segment a folder of HPA fields and write every cell into the HDF5 cell cache (the `segment.py` job).

Resumable: images already in the cache (or its journal) are skipped, so rerunning the same command after a
crash or Ctrl-C continues where it stopped. Unreadable images, missing channels and images without cells are
recorded in the cache's `skipped` table and the summary, and do not stop the run unless `strict`.
Reading the next batch overlaps with segmenting the current one (a background thread).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hpa_cells.cache import CacheProvenance, CellCacheWriter
from hpa_cells.crops import CropConfig, extract_cell_crops
from hpa_cells.images import (
    AUTO_WORKING_SIZE_RULE,
    ImageReadError,
    auto_working_size,
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
    images_done: int = 0
    skipped: dict[str, str] = field(default_factory=dict)
    cells_kept: int = 0
    cells_flagged: Counter = field(default_factory=Counter)
    cells_per_image: list[int] = field(default_factory=list)
    seconds: float = 0.0
    labels_without_images: int = 0
    images_without_labels: int = 0
    working_sizes: Counter = field(default_factory=Counter)
    """(original H, W, working H, W) -> images segmented now at that working size."""

    @property
    def images_per_second(self) -> float:
        return self.images_done / self.seconds if self.seconds else 0.0

    def lines(self) -> list[str]:
        counts = np.asarray(self.cells_per_image or [0])
        out = [
            f"images found: {self.images_found}; already in the cache: {self.images_already_done}; "
            f"segmented now: {self.images_done}; skipped now: {len(self.skipped)}",
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

    def __post_init__(self) -> None:
        size = self.working_size
        if size != "auto" and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise ValueError(f"working_size must be a positive int or 'auto', got {size!r}")


def _read_batch(paths: Sequence[tuple[str, dict]],
                working_size: int | str) -> list[tuple[str, np.ndarray | None, tuple[int, int], str]]:
    """Read images (at working size) with their original shapes; failures become a reason string."""
    out = []
    for sample_id, files in paths:
        try:
            image = read_sample_files(files, sample_id=sample_id, size=None)
            original = image.shape[1:]
            size = auto_working_size(*original) if working_size == "auto" else working_size
            if max(original) != size:
                image = resize_image(image, size)
            out.append((sample_id, image, original, ""))
        except ImageReadError as err:
            out.append((sample_id, None, (0, 0), f"unreadable: {err}"))
    return out


def _batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _masks_by_id(segmenter, good: list, skip) -> tuple[list, list]:
    """Results of a segmenter that reads each image's masks by id; an image whose masks are missing or wrong is
    skipped with the reason (the run goes on)."""
    from segmentation.mask_folder import MaskFileError

    kept, results = [], []
    for entry in good:
        image_id, image, _ = entry
        try:
            results.append(segmenter.segment_batch([image], image_ids=[image_id])[0])
        except MaskFileError as err:
            skip(image_id, str(err))
            continue
        kept.append(entry)
    return kept, results


def _cache_provenance(job: SegmentJob, segmenter: Segmenter) -> CacheProvenance:
    """What the cache records about how its cells were made: segmenter, model checksum, every setting."""
    provenance = segmenter.provenance()
    cell_model = provenance.get("cell_model")
    return CacheProvenance(
        segmenter=segmenter.name,
        model_sha256=str(cell_model.get("sha256", "")) if isinstance(cell_model, dict) else "",
        parameters={**provenance, "working_size": job.working_size, "crop": job.crop.__dict__,
                    "images_dir": str(job.images_dir.resolve()),
                    # each image's own working size is in the cache's images/working_hw
                    **({"working_size_rule": AUTO_WORKING_SIZE_RULE} if job.working_size == "auto" else {})},
    )


def _read_ahead(reader: ThreadPoolExecutor, batches: Sequence[Sequence[tuple[str, dict]]],
                size: int | str) -> Iterator[list[tuple[str, np.ndarray | None, tuple[int, int], str]]]:
    """The read batches in order, the next one read in `reader`'s thread while the caller segments this one."""
    pending: Future | None = reader.submit(_read_batch, batches[0], size) if batches else None
    for index in range(len(batches)):
        loaded = pending.result()
        pending = reader.submit(_read_batch, batches[index + 1], size) if index + 1 < len(batches) else None
        yield loaded


def _segment_loaded(segmenter: Segmenter, loaded: list, skip: Callable[[str, str], None]) -> list[tuple]:
    """((image_id, image, original shape), result) for the readable images of a batch; unreadable ones skipped."""
    good = [(i, im, orig) for i, im, orig, reason in loaded if im is not None]
    for image_id, _, _, reason in loaded:
        if reason:
            skip(image_id, reason)
    if getattr(segmenter, "reads_masks_by_id", False):  # masks made elsewhere, one file per image
        good, results = _masks_by_id(segmenter, good, skip)
    else:
        results = segmenter.segment_batch([im for _, im, _ in good]) if good else []
    return list(zip(good, results, strict=True))


def _store_image(writer: CellCacheWriter, job: SegmentJob, labels: dict | None, summary: SegmentRunSummary,
                 entry: tuple[str, np.ndarray, tuple[int, int]], result: SegmentationResult) -> None:
    """Crop one segmented image's cells into the cache (and export its masks); count it in `summary`."""
    image_id, image, original = entry
    flags = dict(zip(result.qc.cell_id.tolist(), result.qc.flags.tolist(), strict=True))
    crops = extract_cell_crops(image, result.cells, result.nuclei, config=job.crop, qc_flags=flags)
    label_vector = None
    if labels is not None and image_id in labels:
        label_vector = to_multi_hot([labels[image_id]])[0]
    writer.add_cell_crops(image_id, crops, result.cells, result.nuclei, tuple(original), label_vector,
                          image_chw=image)
    if job.export_masks_dir is not None:
        write_label_mask(job.export_masks_dir / f"{image_id}_cells.png", resize_mask(result.cells, tuple(original)))
        write_label_mask(job.export_masks_dir / f"{image_id}_nuclei.png", resize_mask(result.nuclei, tuple(original)))
    summary.images_done += 1
    summary.working_sizes[(*original, *image.shape[1:])] += 1
    summary.cells_kept += len(crops)
    summary.cells_per_image.append(len(crops))
    for value in result.qc.flags.tolist():
        summary.cells_flagged.update(names_of_bits(value))


def segment_folder(job: SegmentJob, segmenter: Segmenter) -> SegmentRunSummary:
    """Run the job; returns this run's summary (progress is shown with tqdm)."""
    from tqdm import tqdm

    started = time.time()
    summary = SegmentRunSummary()
    scan = scan_folder(job.images_dir)
    labels = read_labels(job.labels_path) if job.labels_path else None
    all_ids = sorted(set(scan.complete) | set(scan.incomplete))
    summary.images_found = len(all_ids)
    if labels is not None:
        match = match_labels_to_images(labels, all_ids)
        summary.labels_without_images = len(match.labels_without_images)
        summary.images_without_labels = len(match.images_without_labels)
    if job.export_masks_dir is not None:
        job.export_masks_dir.mkdir(parents=True, exist_ok=True)
    with CellCacheWriter(job.out_path, job.crop.crop_size, _cache_provenance(job, segmenter), QC_FLAG_NAMES) as writer:
        done = writer.done_image_ids()
        todo = [i for i in all_ids if i not in done]
        summary.images_already_done = len(all_ids) - len(todo)
        if job.limit is not None:
            todo = todo[: job.limit]

        def skip(image_id: str, reason: str) -> None:
            if job.strict:
                raise StrictModeError(f"image {image_id!r} in {job.images_dir}: {reason} (--strict stops here; "
                                      f"{summary.images_done} images already written are kept)")
            logger.warning("skipping %s: %s", image_id, reason)
            writer.add_skipped(image_id, reason)
            summary.skipped[image_id] = reason

        readable = []
        for image_id in todo:
            if image_id in scan.incomplete:
                skip(image_id, f"missing channel(s): {', '.join(scan.incomplete[image_id])}")
            else:
                readable.append((image_id, scan.complete[image_id]))
        bar = tqdm(total=len(readable), desc="segment", unit="image")
        with bar, ThreadPoolExecutor(max_workers=1) as reader:  # the bar closes on errors too
            for loaded in _read_ahead(reader, list(_batches(readable, job.batch_size)), job.working_size):
                for entry, result in _segment_loaded(segmenter, loaded, skip):
                    if result.n_cells == 0:
                        skip(entry[0], "no cells found")
                        continue
                    _store_image(writer, job, labels, summary, entry, result)
                bar.update(len(loaded))
    summary.seconds = time.time() - started
    return summary
