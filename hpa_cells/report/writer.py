"""Writing the report folder: the image maps placed inside it, the figures, index.html and one page per image
(layout in `hpa_cells.report`); and `write_maps_and_report`, which draws the maps first."""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hpa_cells.atomic_files import atomic_output, write_text_atomic
from hpa_cells.labels import read_labels
from hpa_cells.maps import ImageMaps, PredictionRun, write_maps
from hpa_cells.report.figures import cells_per_image_figure, pr_curves_figure
from hpa_cells.report.pages import ReportFiles, cell_scores_shown, image_page, index_page
from hpa_cells.scoring import score_prediction_folder

logger = logging.getLogger(__name__)


def place_maps(maps: ImageMaps, report_dir: Path) -> ReportFiles:
    """Copy an image's PNG maps under `report_dir/maps/{id}/` (unless already there)."""
    target = report_dir / "maps" / maps.image_id
    target.mkdir(parents=True, exist_ok=True)

    def place(source: Path) -> str:
        destination = target / source.name
        if source.resolve() != destination.resolve():
            with atomic_output(destination) as partial:
                shutil.copyfile(source, partial)
        return destination.relative_to(report_dir).as_posix()

    tiffs = tuple(str(Path(p).resolve()) for p in (maps.cells_tiff, maps.probabilities_tiff) if p is not None)
    return ReportFiles(place(maps.overview), {c: place(p) for c, p in maps.class_panels.items()},
                       place(maps.attention), place(maps.thumbnail), tiffs)


def labels_for(run: PredictionRun, labels_path: Path | None) -> tuple[dict[str, tuple[int, ...]], str]:
    """(image labels, where they come from): the labels CSV when given, else the labels stored in the cell
    cache."""
    if labels_path is not None:
        return {k: tuple(v) for k, v in read_labels(labels_path).items()}, f"labels file {labels_path}"
    return dict(run.cache_labels), "labels stored in the cell cache"


def write_report(run: PredictionRun, maps: Sequence[ImageMaps], report_dir: str | os.PathLike[str],
                 labels_path: Path | None = None, truth_dir: Path | None = None,
                 failures: Mapping[str, str] | None = None) -> Path:
    """Write the report folder (layout in `hpa_cells.report`) for the images in `maps`; returns index.html.
    `failures` (image id -> one-line error; by default `maps.failures` when `maps` is `write_maps`'s result):
    the images whose maps could not be drawn, listed on the index page.

    The scores are `hpa_cells.scoring.score_prediction_folder`'s, as evaluate.py prints them: image F1 on the
    predicted images with labels; with `truth_dir`, the cell mAP over the labelled images that have per-cell truth
    (every image with truth when there are no labels)."""
    report_dir = Path(report_dir)
    (report_dir / "images").mkdir(parents=True, exist_ok=True)
    (report_dir / "figures").mkdir(exist_ok=True)
    labels, source = labels_for(run, labels_path)
    scores = score_prediction_folder(run.folder, labels or None, truth_dir, cache=run.cache)
    files = {m.image_id: place_maps(m, report_dir) for m in maps}
    failures = dict(failures if failures is not None else getattr(maps, "failures", {}))

    cells_per_image_figure(run, report_dir / "figures" / "cells_per_image.png")
    if cell_scores_shown(scores):
        pr_curves_figure(scores.cell_curves, report_dir / "figures" / "pr_curves.png")
    index_path = write_text_atomic(report_dir / "index.html", index_page(run, files, scores, source, truth_dir,
                                                                           failures))
    ordered = [i for i in run.image_ids if i in files]
    for index, image_id in enumerate(ordered):
        write_text_atomic(report_dir / "images" / f"{image_id}.html",
                          image_page(run, ordered, index, files[image_id], labels))
    logger.info("wrote report of %d images to %s%s", len(files), index_path,
                f" ({len(failures)} images whose maps could not be drawn listed there)" if failures else "")
    return index_path


@dataclass(frozen=True)
class MapsAndReport:
    """What `write_maps_and_report` wrote and how long it took."""

    maps: list[ImageMaps]
    maps_dir: Path
    report_index: Path | None
    seconds: float
    failures: dict[str, str] = field(default_factory=dict)
    """image id -> one-line error of each image whose maps could not be drawn (also in maps_index.csv)."""


def write_maps_and_report(pred_dir: str | os.PathLike[str], maps_dir: Path | None = None,
                          report_dir: Path | None = None, extra_classes: Sequence[int] = (),
                          labels_path: Path | None = None, truth_dir: Path | None = None,
                          write_tiff: bool = True, cache_path: Path | None = None, images_dir: Path | None = None,
                          limit: int | None = None, show_progress: bool = False) -> MapsAndReport:
    """Maps of a prediction folder into `maps_dir` and/or a report into `report_dir` (what scripts/make_maps.py
    and `predict.py --maps/--report` run). Without `maps_dir` the maps are drawn straight into
    `report_dir/maps` and no OME-TIFF is written. `limit`: only the first N images."""
    if maps_dir is None and report_dir is None:
        raise ValueError("give a maps folder, a report folder or both")
    started = time.perf_counter()
    target = Path(maps_dir) if maps_dir is not None else Path(report_dir) / "maps"
    with PredictionRun(pred_dir, cache_path=cache_path, images_dir=images_dir) as run:
        maps = write_maps(run, target, extra_classes, write_tiff=write_tiff and maps_dir is not None,
                          image_ids=run.image_ids[:limit] if limit is not None else None,
                          show_progress=show_progress)
        index = write_report(run, maps, report_dir, labels_path, truth_dir) if report_dir is not None else None
    return MapsAndReport(list(maps), target, index, time.perf_counter() - started, dict(maps.failures))
