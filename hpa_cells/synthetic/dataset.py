"""Generate synthetic HPA-like fields with per-cell ground truth, and write them as a dataset.

`SyntheticGenerator.generate(i)` makes image `i` from `(seed, i)` alone: the image label set (drawn
from the real 2018 label sets, optionally balanced), a field of one cell line, the cells carrying each
label, the four channels and the instance masks. Image `i` never depends on other images, so datasets
can be generated in parallel and resumed. Two independent random streams are split off `(seed, i)`:
one for the layout and labels (`plan`), one for the pixels (`render`), so the truth tables of images
already on disk can be rebuilt cheaply without rendering them again.

Output (`write_dataset`), in the Kaggle 2018 layout plus truth:

- `{id}_{red,green,blue,yellow}.png` (uint8) and `train.csv` (`Id,Target`);
- `{id}_cells.png`, `{id}_nuclei.png`: 16-bit instance masks, 0 = background, cells 1..N, nucleus
  pixels carry the id of their cell (`{id}_cells.png` is written last, atomically, and marks a
  complete image);
- `cells.csv`: one row per cell (`image_id,cell_id,labels,...`, see `CellRecord`);
- `synthetic.json`: generator settings and seed.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from hpa_cells.atomic_files import atomic_output, write_json_atomic
from hpa_cells.channels import CHANNELS
from hpa_cells.classes import NUM_CLASSES
from hpa_cells.images import write_label_mask, write_sample
from hpa_cells.labels import write_labels_2018
from hpa_cells.synthetic.anatomy import build_field_anatomy
from hpa_cells.synthetic.appearance import PRESETS, Appearance, preset_appearance
from hpa_cells.synthetic.cell_labels import LabelAssignmentError, assign_cell_labels, plan_mitotic_carriers
from hpa_cells.synthetic.cell_lines import CELL_LINE_NAMES, cell_line_by_name
from hpa_cells.synthetic.field_layout import FieldLayout, LayoutError
from hpa_cells.synthetic.field_plan import plan_field
from hpa_cells.synthetic.label_sets import (
    DEFAULT_MIN_PREVALENCE,
    LabelSetSampler,
    LabelSetTable,
    load_real_label_sets,
)
from hpa_cells.synthetic.microscope import acquire, draw_acquisition
from hpa_cells.synthetic.patterns import draw_pattern
from hpa_cells.synthetic.rasterise import rasterise_field
from hpa_cells.synthetic.reference_channels import per_cell_map, render_reference_channels

logger = logging.getLogger(__name__)

GENERATOR_NAME = "hpa_cells.synthetic"
GENERATOR_VERSION = 1
"""Bumped whenever a change alters the images made for a given seed (resuming across versions is refused)."""

SETTINGS_FILE = "synthetic.json"
CELLS_FILE = "cells.csv"
LABELS_FILE = "train.csv"
MAX_LAYOUT_ATTEMPTS = 30

EXPOSURE_RANGE = (6.0, 45.0)
"""Per-image green exposure, grey levels per unit of normalised pattern (drawn log-uniformly)."""
EXPRESSION_SPREAD = 0.6
"""Standard deviation of the log expression level between the cells of one image."""
HAZE_RANGE = (0.3, 4.0)
"""Per-image non-specific green in every cell, grey levels (drawn log-uniformly)."""

CELL_COLUMNS: tuple[str, ...] = (
    "image_id",
    "cell_id",
    "labels",
    "cell_line",
    "stage",
    "dividing",
    "n_nuclei",
    "area",
    "nucleus_area",
    "touches_border",
    "centroid_y",
    "centroid_x",
)


class OutputFolderError(RuntimeError):
    """The output folder holds something other than a compatible synthetic dataset."""


@dataclass(frozen=True)
class SyntheticConfig:
    """Settings that determine the images (together with the image index).

    `cell_lines` restricts the cell lines drawn from (all by default); `balanced` reweights the real
    label sets so every class is in at least `min_prevalence` of the images. `appearance` rescales
    morphology and image formation (`SyntheticConfig.preset(name)` takes a named one); the neutral default
    is left out of `to_dict`, so default settings files are as before.
    """

    seed: int = 0
    size: int = 512
    balanced: bool = False
    min_prevalence: float = DEFAULT_MIN_PREVALENCE
    cell_lines: tuple[str, ...] = CELL_LINE_NAMES
    appearance: Appearance = Appearance()

    @classmethod
    def preset(cls, name: str, **settings: object) -> SyntheticConfig:
        """Settings with the named appearance preset (`appearance.PRESETS`); other settings as keywords."""
        return cls(appearance=preset_appearance(name), **settings)  # type: ignore[arg-type]

    @property
    def preset_name(self) -> str:
        """The name of the preset whose appearance this is, or "custom"."""
        return next((name for name, look in PRESETS.items() if look == self.appearance), "custom")

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.size < 64:
            raise ValueError(f"size must be >= 64 px (cells would be a few pixels across), got {self.size}")
        if not self.cell_lines:
            raise ValueError("cell_lines must name at least one cell line")
        for name in self.cell_lines:
            cell_line_by_name(name)

    def to_dict(self) -> dict[str, object]:
        values = asdict(self)
        values["cell_lines"] = list(self.cell_lines)
        if self.appearance.is_neutral:
            del values["appearance"]
        else:
            values["appearance"] = self.appearance.to_dict()
        return values

    @classmethod
    def from_dict(cls, values: dict[str, object]) -> SyntheticConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown synthetic settings {unknown}; known: {sorted(known)}")
        values = dict(values)
        if "cell_lines" in values:
            values["cell_lines"] = tuple(values["cell_lines"])  # type: ignore[arg-type]
        if "appearance" in values:
            values["appearance"] = Appearance.from_dict(values["appearance"])  # type: ignore[arg-type]
        return cls(**values)  # type: ignore[arg-type]


@dataclass(frozen=True)
class CellRecord:
    """One row of `cells.csv`: a cell's truth (labels = sorted 2018 class ids, empty for none)."""

    image_id: str
    cell_id: int
    labels: tuple[int, ...]
    cell_line: str
    stage: str
    dividing: bool
    n_nuclei: int
    area: int
    nucleus_area: int
    touches_border: bool
    centroid_y: float
    centroid_x: float

    def to_row(self) -> dict[str, str]:
        return {
            "image_id": self.image_id,
            "cell_id": str(self.cell_id),
            "labels": " ".join(str(c) for c in self.labels),
            "cell_line": self.cell_line,
            "stage": self.stage,
            "dividing": str(int(self.dividing)),
            "n_nuclei": str(self.n_nuclei),
            "area": str(self.area),
            "nucleus_area": str(self.nucleus_area),
            "touches_border": str(int(self.touches_border)),
            "centroid_y": f"{self.centroid_y:.1f}",
            "centroid_x": f"{self.centroid_x:.1f}",
        }


@dataclass(frozen=True)
class FieldPlan:
    """Layout and per-cell labels of one image: everything its truth tables need, before any pixels."""

    index: int
    image_id: str
    labels: tuple[int, ...]
    layout: FieldLayout
    cell_labels: tuple[tuple[int, ...], ...]

    def records(self) -> tuple[CellRecord, ...]:
        """One `CellRecord` per cell, in cell-id order."""
        rows = []
        for cell, labels in zip(self.layout.cells, self.cell_labels, strict=True):
            centroid = cell.centroid_yx()
            rows.append(
                CellRecord(
                    image_id=self.image_id,
                    cell_id=cell.cell_id,
                    labels=labels,
                    cell_line=self.layout.line.name,
                    stage=cell.stage,
                    dividing=cell.dividing,
                    n_nuclei=cell.n_nuclei,
                    area=cell.area,
                    nucleus_area=cell.nucleus_area,
                    touches_border=cell.touches_border,
                    centroid_y=centroid[0],
                    centroid_x=centroid[1],
                )
            )
        return tuple(rows)


@dataclass(frozen=True)
class SyntheticSample:
    """One generated image: `image` is `4,H,W` uint8 (red, green, blue, yellow); masks are `H,W` uint16."""

    image_id: str
    labels: tuple[int, ...]
    image: np.ndarray
    cell_mask: np.ndarray
    nucleus_mask: np.ndarray
    cells: tuple[CellRecord, ...]


class SyntheticGenerator:
    """Makes synthetic images from a `SyntheticConfig`; image `i` depends only on (seed, i)."""

    def __init__(self, config: SyntheticConfig, label_sets: LabelSetTable | None = None) -> None:
        self.config = config
        table = label_sets if label_sets is not None else load_real_label_sets()
        self.sampler = LabelSetSampler(table, balanced=config.balanced, min_prevalence=config.min_prevalence)

    def image_id(self, index: int) -> str:
        """The id of image `index`, e.g. `synth-s0-000042`."""
        return f"synth-s{self.config.seed}-{index:06d}"

    def _streams(self, index: int) -> tuple[np.random.Generator, np.random.Generator]:
        if index < 0:
            raise ValueError(f"image index must be >= 0, got {index}")
        layout_seed, render_seed = np.random.SeedSequence([self.config.seed, index]).spawn(2)
        return np.random.default_rng(layout_seed), np.random.default_rng(render_seed)

    def plan(
        self, index: int, label_set: Sequence[int] | None = None, cell_line: str | None = None
    ) -> FieldPlan:
        """Labels, layout and carriers of image `index` (optionally forcing its label set or cell line)."""
        rng, _ = self._streams(index)
        return self._plan(rng, index, label_set, cell_line)

    def _plan(
        self, rng: np.random.Generator, index: int, label_set: Sequence[int] | None, cell_line: str | None
    ) -> FieldPlan:
        labels = self.sampler.sample(rng) if label_set is None else tuple(sorted({int(c) for c in label_set}))
        if any(not 0 <= c < NUM_CLASSES for c in labels):
            raise ValueError(f"image {index}: label ids {labels} outside 0-{NUM_CLASSES - 1}")
        line_name = cell_line or self.config.cell_lines[int(rng.integers(0, len(self.config.cell_lines)))]
        line = self.config.appearance.apply_to_line(cell_line_by_name(line_name))
        problems = []
        for _ in range(MAX_LAYOUT_ATTEMPTS):
            dividing = plan_mitotic_carriers(rng, labels)
            try:
                plans = plan_field(rng, self.config.size, line, dividing)
                layout = rasterise_field(plans, self.config.size, rng)
                cell_labels = assign_cell_labels(rng, layout, labels)
            except (LayoutError, LabelAssignmentError) as error:
                problems.append(str(error))
                continue
            return FieldPlan(index, self.image_id(index), labels, layout, cell_labels)
        raise LayoutError(
            f"image {index} ({self.image_id(index)}): no valid layout for labels {labels} in "
            f"{MAX_LAYOUT_ATTEMPTS} attempts; last problem: {problems[-1]}"
        )

    def render(self, plan: FieldPlan) -> SyntheticSample:
        """The pixels of a planned image (uses the image's own render stream, so it is deterministic)."""
        _, rng = self._streams(plan.index)
        return self._render(rng, plan)

    def _render(self, rng: np.random.Generator, plan: FieldPlan) -> SyntheticSample:
        layout = plan.layout
        size = layout.size
        acquisition = self.config.appearance.apply_to_acquisition(draw_acquisition(rng, size))
        anatomy = build_field_anatomy(rng, layout)
        signal = np.empty((4, size, size), dtype=np.float32)
        red, blue, yellow = render_reference_channels(rng, anatomy)
        self.config.appearance.apply_to_stains(red, blue, yellow)
        signal[0], signal[2], signal[3] = red, blue, yellow
        # Green: faint non-specific background in every cell, then each carried label's pattern.
        exposure = float(np.exp(rng.uniform(np.log(EXPOSURE_RANGE[0]), np.log(EXPOSURE_RANGE[1]))))
        haze = float(np.exp(rng.uniform(np.log(HAZE_RANGE[0]), np.log(HAZE_RANGE[1]))))
        haze *= self.config.appearance.protein_haze_scale
        n_cells = len(layout.cells)
        haze_per_cell = np.zeros(n_cells + 1, dtype=np.float32)
        haze_per_cell[1:] = haze * np.exp(rng.normal(0.0, 0.4, n_cells))
        cell_ids = layout.cell_mask.astype(np.uint8) if n_cells < 256 else layout.cell_mask
        signal[1] = per_cell_map(haze_per_cell, cell_ids) * (np.float32(0.6) + np.float32(0.4) * yellow)
        if self.config.appearance.protein_haze_nuclear > 0:
            nuclear = per_cell_map(haze_per_cell, cell_ids) * (layout.nucleus_mask > 0)
            signal[1] += np.float32(self.config.appearance.protein_haze_nuclear) * nuclear
        expression = exposure * np.exp(rng.normal(0.0, EXPRESSION_SPREAD, n_cells))
        for index, labels in enumerate(plan.cell_labels):
            if not labels:
                continue
            cell = anatomy.cell(index)
            rows, cols = cell.geometry.crop_slices()
            for class_id in labels:
                level = np.float32(expression[index] * np.exp(rng.normal(0.0, 0.25)))
                signal[1, rows, cols] += draw_pattern(class_id, cell, rng) * level
        image = acquire(signal, acquisition, rng)
        return SyntheticSample(
            image_id=plan.image_id,
            labels=plan.labels,
            image=image,
            cell_mask=layout.cell_mask,
            nucleus_mask=layout.nucleus_mask,
            cells=plan.records(),
        )

    def generate(
        self, index: int, label_set: Sequence[int] | None = None, cell_line: str | None = None
    ) -> SyntheticSample:
        """Image `index`: plan + render. `label_set` / `cell_line` force those choices (tests, contact sheet)."""
        layout_rng, render_rng = self._streams(index)
        return self._render(render_rng, self._plan(layout_rng, index, label_set, cell_line))


# --------------------------------------------------------------------------------------------------
# Writing a dataset
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetSummary:
    """What `write_dataset` did: images in the dataset, newly written, skipped (already complete), cells,
    per-class image prevalence (`28,`), per-class carrier-cell counts (`28,`) and wall time."""

    out_dir: Path
    n_images: int
    n_written: int
    n_skipped: int
    n_cells: int
    n_dividing: int
    prevalence: np.ndarray
    cell_counts: np.ndarray
    seconds: float
    workers: int = 1
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        return self.n_written / self.seconds if self.seconds > 0 else float("inf")


def sample_paths(out_dir: Path, image_id: str) -> dict[str, Path]:
    """Paths of the files written for one image (4 channels + 2 masks)."""
    paths = {channel: out_dir / f"{image_id}_{channel}.png" for channel in CHANNELS}
    paths["nuclei"] = out_dir / f"{image_id}_nuclei.png"
    paths["cells"] = out_dir / f"{image_id}_cells.png"
    return paths


def write_sample_files(out_dir: Path, sample: SyntheticSample) -> dict[str, Path]:
    """Write one sample's channels and masks; the cell mask goes last and atomically (completion marker)."""
    paths = sample_paths(out_dir, sample.image_id)
    write_sample(out_dir, sample.image_id, sample.image, ext="png")
    write_label_mask(paths["nuclei"], sample.nucleus_mask)
    with atomic_output(paths["cells"]) as partial_path:  # .{id}_cells.partial.png until complete
        write_label_mask(partial_path, sample.cell_mask)
    return paths


def is_complete(out_dir: Path, image_id: str) -> bool:
    """Whether all six files of an image exist (the cell mask, written last, marks completion)."""
    return all(path.is_file() for path in sample_paths(out_dir, image_id).values())


def _settings_document(config: SyntheticConfig, n_images: int) -> dict[str, object]:
    preset = {} if config.appearance.is_neutral else {"preset": config.preset_name}
    return {
        "generator": GENERATOR_NAME,
        "version": GENERATOR_VERSION,
        **preset,
        "settings": config.to_dict(),
        "n_images": n_images,
        "image_ids": "synth-s{seed}-{index:06d}",
        "files": "{id}_{red,green,blue,yellow}.png, {id}_cells.png, {id}_nuclei.png, train.csv, cells.csv",
    }


def _appearance_label(config: SyntheticConfig) -> str:
    """A preset's name, or a custom appearance's settings (for messages)."""
    name = config.preset_name
    return f"preset {name}" if name != "custom" else f"custom appearance {config.appearance.to_dict()}"


def check_output_folder(out_dir: Path, config: SyntheticConfig) -> bool:
    """Check that `out_dir` may be written; returns True when it holds a compatible earlier run (resume).

    Raises `OutputFolderError` when the folder is not empty and is not a synthetic dataset made with the
    same generator version and settings.
    """
    if not out_dir.exists():
        return False
    if not out_dir.is_dir():
        raise OutputFolderError(f"{out_dir} exists and is not a folder")
    entries = sorted(p.name for p in out_dir.iterdir())
    if not entries:
        return False
    settings_path = out_dir / SETTINGS_FILE
    if not settings_path.is_file():
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise OutputFolderError(
            f"{out_dir} is not empty ({len(entries)} entries: {shown}) and holds no {SETTINGS_FILE}, so it is not "
            f"a synthetic dataset; refusing to write into it (choose an empty or new folder)"
        )
    try:
        document = json.loads(settings_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise OutputFolderError(f"{settings_path}: cannot read earlier settings ({error})") from error
    if not isinstance(document, dict) or document.get("generator") != GENERATOR_NAME:
        raise OutputFolderError(
            f"{settings_path} was not written by {GENERATOR_NAME}; refusing to write into {out_dir}"
        )
    if document.get("version") != GENERATOR_VERSION:
        raise OutputFolderError(
            f"{settings_path}: made by generator version {document.get('version')}, this is version "
            f"{GENERATOR_VERSION}; images would differ, so resuming is refused (use a new folder)"
        )
    try:
        previous = SyntheticConfig.from_dict(document.get("settings", {}))
    except (TypeError, ValueError, KeyError) as error:
        raise OutputFolderError(f"{settings_path}: unreadable settings ({error})") from error
    if previous != config:
        now, there = config.to_dict(), previous.to_dict()
        now["appearance"], there["appearance"] = _appearance_label(config), _appearance_label(previous)
        differences = ", ".join(
            f"{key}: {there.get(key)!r} there, {now.get(key)!r} now"
            for key in sorted(set(now) | set(there))
            if now.get(key) != there.get(key)
        )
        raise OutputFolderError(
            f"{out_dir} holds a synthetic dataset with other settings ({differences}); use a new folder"
        )
    return True


def _produce(generator: SyntheticGenerator, out_dir: Path, index: int) -> tuple[tuple[CellRecord, ...], bool]:
    """Worker task: make and write image `index` unless complete; returns its cell records and whether it was written."""
    image_id = generator.image_id(index)
    if is_complete(out_dir, image_id):
        return generator.plan(index).records(), False
    sample = generator.generate(index)
    write_sample_files(out_dir, sample)
    return sample.cells, True


def _single_threaded_worker() -> None:
    """Worker-process set-up: one OpenCV thread per worker, so K workers use K cores, not 2K threads."""
    import cv2

    cv2.setNumThreads(1)


def _write_cells_csv(path: Path, records: Sequence[CellRecord]) -> None:
    with atomic_output(path) as partial_path, partial_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(CELL_COLUMNS), lineterminator="\n")
        writer.writeheader()
        for record in records:
            writer.writerow(record.to_row())


def write_dataset(
    out_dir: str | os.PathLike[str],
    n_images: int,
    config: SyntheticConfig,
    workers: int = 1,
    show_progress: bool = False,
) -> DatasetSummary:
    """Generate images 0..n_images-1 into `out_dir` (see the module docstring for the files).

    Resumes a compatible earlier run: complete images are skipped (their truth rows are rebuilt from
    the layout stream). `workers` > 1 generates in that many processes. Raises `OutputFolderError`
    for a folder that is not a compatible synthetic dataset.
    """
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    out = Path(out_dir)
    settings_path, n_images = _prepare_folder(out, config, n_images)
    generator = SyntheticGenerator(config)
    started = time.perf_counter()
    records, labels, n_written = _generate_all(generator, out, n_images, workers, show_progress)
    seconds = time.perf_counter() - started
    cells_path, labels_path = out / CELLS_FILE, out / LABELS_FILE
    _write_cells_csv(cells_path, records)
    write_labels_2018(labels_path, labels)
    prevalence = np.zeros(NUM_CLASSES)
    for image_labels in labels.values():
        prevalence[list(image_labels)] += 1
    cell_counts = np.zeros(NUM_CLASSES, dtype=np.int64)
    for record in records:
        cell_counts[list(record.labels)] += 1
    summary = DatasetSummary(
        out_dir=out,
        n_images=n_images,
        n_written=n_written,
        n_skipped=n_images - n_written,
        n_cells=len(records),
        n_dividing=sum(int(r.dividing) for r in records),
        prevalence=prevalence / n_images,
        cell_counts=cell_counts,
        seconds=seconds,
        workers=workers,
        files={"cells": cells_path, "labels": labels_path, "settings": settings_path},
    )
    logger.info(
        "%s: %d images (%d written, %d already complete), %d cells in %.1f s",
        out,
        n_images,
        n_written,
        summary.n_skipped,
        summary.n_cells,
        seconds,
    )
    return summary


def _prepare_folder(out: Path, config: SyntheticConfig, n_images: int) -> tuple[Path, int]:
    """Check / create the output folder and write its settings; returns (settings file, images to hold).

    A resumed folder that already holds more images keeps all of them in the tables.
    """
    resuming = check_output_folder(out, config)
    out.mkdir(parents=True, exist_ok=True)
    settings_path = out / SETTINGS_FILE
    previous_n = 0
    if resuming:
        previous_n = int(json.loads(settings_path.read_text(encoding="utf-8")).get("n_images", 0))
    if previous_n > n_images:
        logger.info("%s already holds %d images; keeping all of them in the tables", out, previous_n)
        n_images = previous_n
    write_json_atomic(settings_path, _settings_document(config, n_images))
    return settings_path, n_images


def _generate_all(
    generator: SyntheticGenerator, out: Path, n_images: int, workers: int, show_progress: bool
) -> tuple[list[CellRecord], dict[str, tuple[int, ...]], int]:
    """Make (or skip when complete) images 0..n_images-1 in order, in `workers` processes.

    Returns (every cell record in image order, labels per image id, number of images written).
    """
    from tqdm import tqdm

    task = partial(_produce, generator, out)
    records: list[CellRecord] = []
    labels: dict[str, tuple[int, ...]] = {}
    n_written = 0
    with tqdm(total=n_images, desc="synthetic images", unit="img", disable=not show_progress) as progress:
        if workers == 1:
            results = map(task, range(n_images))
            executor = None
        else:
            executor = ProcessPoolExecutor(
                max_workers=workers, mp_context=get_context("spawn"), initializer=_single_threaded_worker
            )
            results = executor.map(task, range(n_images), chunksize=2)
        try:
            for index, (cells, written) in enumerate(results):
                records.extend(cells)
                labels[generator.image_id(index)] = tuple(sorted(set().union(*(c.labels for c in cells))))
                n_written += int(written)
                progress.update(1)
        finally:
            if executor is not None:
                executor.shutdown(cancel_futures=True)
    return records, labels, n_written
