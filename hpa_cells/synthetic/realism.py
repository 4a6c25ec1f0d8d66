"""Field statistics for comparing synthetic fields with real ones (issue 13, "synthetic realism").

Each function takes one field: `image` is `4,H,W` (red, green, blue, yellow, any numeric dtype), `cells`
an `H,W` instance mask (0 = background, one id per cell) and `nuclei` an `H,W` mask whose nucleus pixels
carry the id of their cell (as the generator's truth and the project's segmenters write them). The
numbers were chosen because a network trained on synthetic fields sees exactly these differences:

- intensity percentiles 1/50/99 per channel (how bright and how saturated a field is);
- background level per channel: the median of the pixels outside every cell (offset and haze);
- cell-interior level per channel: the median inside cells (signal over background);
- cells per field, median cell and nucleus area in px, and the share of the field covered by cells;
- protein texture: the mean gradient magnitude of the green channel inside cells (cell edges excluded)
  divided by the mean green there, so it does not change when the whole field is brighter;
- nucleus / cytoplasm protein ratio: mean green in nuclei over mean green in the rest of the cells.

`field_statistics` returns them as a flat dict of floats (NaN where a field has no cells or no nuclei);
`summarise` reduces a list of those dicts to median and 10th / 90th percentiles over fields.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hpa_cells.channels import CHANNELS

PERCENTILES: tuple[int, ...] = (1, 50, 99)
GREEN = CHANNELS.index("green")


def _check_field(image: np.ndarray, cells: np.ndarray, nuclei: np.ndarray | None) -> None:
    if image.ndim != 3 or image.shape[0] != len(CHANNELS):
        raise ValueError(f"image must be {len(CHANNELS)},H,W, got shape {image.shape}")
    if cells.shape != image.shape[1:]:
        raise ValueError(f"cell mask shape {cells.shape} does not match the image's {image.shape[1:]}")
    if nuclei is not None and nuclei.shape != cells.shape:
        raise ValueError(f"nucleus mask shape {nuclei.shape} does not match the cell mask's {cells.shape}")


def channel_percentiles(image: np.ndarray) -> dict[str, float]:
    """`{channel}_p{q}` for q in `PERCENTILES`: percentiles of all pixels of each channel."""
    out = {}
    for index, channel in enumerate(CHANNELS):
        values = np.percentile(image[index], PERCENTILES)
        for q, value in zip(PERCENTILES, values, strict=True):
            out[f"{channel}_p{q}"] = float(value)
    return out


def region_medians(image: np.ndarray, cells: np.ndarray) -> dict[str, float]:
    """`{channel}_background` (median outside cells) and `{channel}_cell` (median inside cells); NaN if empty."""
    out = {}
    inside = cells > 0
    for index, channel in enumerate(CHANNELS):
        plane = image[index]
        out[f"{channel}_background"] = float(np.median(plane[~inside])) if (~inside).any() else float("nan")
        out[f"{channel}_cell"] = float(np.median(plane[inside])) if inside.any() else float("nan")
    return out


def morphology(cells: np.ndarray, nuclei: np.ndarray | None) -> dict[str, float]:
    """Cells per field, median cell area, median nucleus area (cells with a nucleus) and cell coverage."""
    ids, areas = np.unique(cells[cells > 0], return_counts=True)
    out = {
        "cells": float(len(ids)),
        "cell_area": float(np.median(areas)) if len(ids) else float("nan"),
        "coverage": float(np.mean(cells > 0)),
        "nucleus_area": float("nan"),
    }
    if nuclei is not None and (nuclei > 0).any():
        _, nucleus_areas = np.unique(nuclei[nuclei > 0], return_counts=True)
        out["nucleus_area"] = float(np.median(nucleus_areas))
    return out


def interior(cells: np.ndarray) -> np.ndarray:
    """Pixels whose 4 neighbours lie in the same cell (so a gradient there does not cross a cell edge)."""
    padded = np.pad(cells, 1, mode="constant", constant_values=0)
    centre = padded[1:-1, 1:-1]
    same = (
        (padded[:-2, 1:-1] == centre)
        & (padded[2:, 1:-1] == centre)
        & (padded[1:-1, :-2] == centre)
        & (padded[1:-1, 2:] == centre)
    )
    return same & (centre > 0)


def protein_texture(green: np.ndarray, cells: np.ndarray) -> float:
    """Mean central-difference gradient magnitude of `green` over cell interiors / mean green there.

    NaN when no interior pixel exists or the green there is all zero.
    """
    plane = green.astype(np.float64)
    grad_y, grad_x = np.gradient(plane)
    magnitude = np.hypot(grad_y, grad_x)
    keep = interior(cells)
    if not keep.any():
        return float("nan")
    level = plane[keep].mean()
    return float(magnitude[keep].mean() / level) if level > 0 else float("nan")


def nucleus_cytoplasm_ratio(green: np.ndarray, cells: np.ndarray, nuclei: np.ndarray) -> float:
    """Mean green in nuclei / mean green in cytoplasm (cell pixels outside nuclei); NaN if either is empty or 0."""
    in_nucleus = (nuclei > 0) & (cells > 0)
    in_cytoplasm = (cells > 0) & ~in_nucleus
    if not in_nucleus.any() or not in_cytoplasm.any():
        return float("nan")
    cytoplasm = float(green[in_cytoplasm].astype(np.float64).mean())
    if cytoplasm <= 0:
        return float("nan")
    return float(green[in_nucleus].astype(np.float64).mean() / cytoplasm)


def field_statistics(image: np.ndarray, cells: np.ndarray, nuclei: np.ndarray | None) -> dict[str, float]:
    """All statistics of one field as a flat dict (see the module docstring)."""
    _check_field(image, cells, nuclei)
    stats = channel_percentiles(image)
    stats.update(region_medians(image, cells))
    stats.update(morphology(cells, nuclei))
    stats["protein_texture"] = protein_texture(image[GREEN], cells)
    stats["nucleus_cytoplasm_ratio"] = (
        nucleus_cytoplasm_ratio(image[GREEN], cells, nuclei) if nuclei is not None else float("nan")
    )
    return stats


def summarise(per_field: Sequence[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per statistic: median, p10 and p90 over fields (NaN fields left out) and the number of fields used."""
    if not per_field:
        raise ValueError("no fields to summarise")
    out = {}
    for key in per_field[0]:
        values = np.array([row[key] for row in per_field], dtype=np.float64)
        values = values[np.isfinite(values)]
        if not len(values):
            out[key] = {"median": float("nan"), "p10": float("nan"), "p90": float("nan"), "n": 0.0}
            continue
        p10, median, p90 = np.percentile(values, [10, 50, 90])
        out[key] = {"median": float(median), "p10": float(p10), "p90": float(p90), "n": float(len(values))}
    return out


def log_ratio_gap(
    summary: dict[str, dict[str, float]],
    reference: dict[str, dict[str, float]],
    keys: Sequence[str],
    floor: float = 5.0,
) -> float:
    """Mean |log((a + f) / (b + f))| over the medians a, b of `keys`: 0 when every median matches.

    f = `floor` grey levels for intensity statistics (names starting with a channel), so that a background of
    0 against 2 grey levels does not dominate; f = 0 for the others (counts, areas, ratios).
    """
    gaps = []
    for key in keys:
        a, b = summary[key]["median"], reference[key]["median"]
        f = floor if key.split("_")[0] in CHANNELS else 0.0
        if np.isfinite(a) and np.isfinite(b) and a + f > 0 and b + f > 0:
            gaps.append(abs(np.log((a + f) / (b + f))))
    return float(np.mean(gaps)) if gaps else float("nan")
