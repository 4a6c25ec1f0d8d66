"""How the class widget colours cells (no napari, no Qt): each cell by its probability of one class.

A cell at or above the threshold gets the viridis colour of its probability, opaque; one below it the same colour
at `BELOW_THRESHOLD_ALPHA`; a cell with any QC flag is grey and dim (`QC_RGBA`) whatever its probability, as
the maps draw it. The probabilities are cells.csv's (the layer's features table holds them)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib import colormaps

from hpa_cells.classes import CLASS_NAMES

COLOURMAP = "viridis"
BELOW_THRESHOLD_ALPHA = 0.25
QC_RGBA = (0.5, 0.5, 0.5, 0.3)
TRANSPARENT = (0.0, 0.0, 0.0, 0.0)


def probability_rgba(probability: float, threshold: float, flagged: bool) -> tuple[float, float, float, float]:
    """The colour of one cell (see the module docstring)."""
    if flagged:
        return QC_RGBA
    red, green, blue, _ = colormaps[COLOURMAP](float(np.clip(probability, 0.0, 1.0)))
    alpha = 1.0 if probability >= threshold else BELOW_THRESHOLD_ALPHA
    return (float(red), float(green), float(blue), alpha)


def probability_colours(features: pd.DataFrame, class_id: int, threshold: float) -> dict:
    """label -> RGBA for a Labels layer's direct colormap: every cell of `features` by its probability of
    `class_id`; background (0) and unlisted labels (None) transparent."""
    colours: dict = {None: TRANSPARENT, 0: TRANSPARENT}
    probabilities = features[CLASS_NAMES[class_id]].to_numpy(dtype=np.float64)
    flagged = features["qc_flags"].to_numpy(dtype=np.int64) != 0 if "qc_flags" in features else np.zeros(
        len(features), dtype=bool)
    for cell_id, probability, qc in zip(features["index"], probabilities, flagged, strict=True):
        colours[int(cell_id)] = probability_rgba(float(probability), threshold, bool(qc))
    return colours


def cell_probability_rows(features: pd.DataFrame, cell_id: int) -> list[tuple[str, float]]:
    """(class name, probability) of one cell, most probable first; empty when the cell is not in `features`."""
    rows = features[features["index"] == int(cell_id)]
    if rows.empty:
        return []
    row = rows.iloc[0]
    pairs = [(name, float(row[name])) for name in CLASS_NAMES]
    return sorted(pairs, key=lambda pair: -pair[1])
