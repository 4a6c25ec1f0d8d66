"""The report's figures, drawn with matplotlib's object API (no pyplot, no global backend switch): cells per
image and cell-level precision-recall curves per class."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from hpa_cells.atomic_files import atomic_output
from hpa_cells.classes import CLASS_COLOURS, CLASS_NAMES
from hpa_cells.maps import PredictionRun
from hpa_cells.metrics import ClassCurve


def _save_figure(figure: object, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    with atomic_output(path) as partial:
        figure.savefig(partial, dpi=100)
    return path


def cells_per_image_figure(run: PredictionRun, path: Path) -> Path:
    """Histogram of cells per image (all cells and cells pooled for the image prediction)."""
    from matplotlib.figure import Figure

    counts = run.cells.groupby("image_id").size().reindex(run.image_ids, fill_value=0).to_numpy()
    pooled = (run.cells[run.cells["used_for_image"].astype(bool)].groupby("image_id").size()
              .reindex(run.image_ids, fill_value=0).to_numpy())
    figure = Figure(figsize=(6.4, 2.8))
    figure.subplots_adjust(left=0.1, right=0.98, bottom=0.17, top=0.95)
    axes = figure.add_subplot()
    top = int(max(counts.max(initial=1), 1))
    bins = np.arange(top + 2) - 0.5 if top <= 60 else np.linspace(0, top + 1, 31)
    axes.hist(counts, bins=bins, color="#5b7fbf", label="all cells")
    axes.hist(pooled, bins=bins, histtype="step", color="#d0542a", linewidth=1.8, label="pooled (no excluded QC flag)")
    axes.set_xlabel("cells per image")
    axes.set_ylabel("images")
    axes.legend(frameon=False, fontsize=8)
    axes.spines[["top", "right"]].set_visible(False)
    return _save_figure(figure, path)


def pr_curves_figure(curves: Mapping[int, ClassCurve], path: Path) -> Path:
    """Small multiples: one cell-level PR curve per class carried by some true cell (`FolderScores.cell_curves`:
    class id -> curve; shared axes: one set of tick labels per row and column keeps the figure quick to draw)."""
    from matplotlib.figure import Figure

    classes = sorted(curves)
    columns = min(4, max(len(classes), 1))
    rows = max(1, -(-len(classes) // columns))
    height = 2.2 * rows + 0.6
    figure = Figure(figsize=(2.9 * columns, height))
    figure.subplots_adjust(left=0.07, right=0.99, bottom=0.55 / height, top=1 - 0.42 / height, hspace=0.6,
                           wspace=0.08)
    grid = figure.subplots(rows, columns, sharex=True, sharey=True, squeeze=False)
    for k, axes in enumerate(grid.ravel()):
        if k >= len(classes):
            axes.set_visible(False)
            continue
        class_id = classes[k]
        curve = curves[class_id]
        axes.step(np.r_[0.0, curve.recall], np.r_[1.0, curve.precision], where="post", color=CLASS_COLOURS[class_id],
                  linewidth=1.8)
        axes.set_title(f"{CLASS_NAMES[class_id]}\nAP {curve.average_precision:.2f} ({curve.n_positives} cells)",
                       fontsize=8)
    grid[0, 0].set_xlim(0, 1.02)
    grid[0, 0].set_ylim(0, 1.05)
    for axes in grid[:, 0]:
        axes.set_ylabel("precision", fontsize=8)
    for k, axes in enumerate(grid.ravel()):
        if k < len(classes) and k + columns >= len(classes):  # lowest plot of its column
            axes.xaxis.set_tick_params(labelbottom=True)
            axes.set_xlabel("recall", fontsize=8)
    for axes in grid.ravel():
        axes.tick_params(labelsize=7)
    return _save_figure(figure, path)
