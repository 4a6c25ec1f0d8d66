"""Cells grown from nuclei over Cellpose's cell probability: the `nuclei` cell assembly of `CellposeSegmenter`.

Cellpose's own way to turn network outputs into cells follows the predicted flows to their sinks (`flows`). On
real HPA fields the bundled cell network, fine-tuned on only four or five real fields, often merges or splits
cells that way. HPA's own segmentation (HPA-Cell-Segmentation, which made the reference masks) instead grows one
cell from each nucleus. This module does the same with Cellpose's outputs:

- seeds: the nucleus instances of the Cellpose nuclei network (one cell per nucleus, so every cell has exactly
  one nucleus and a cell whose nucleus lies outside the field is not found);
- area: pixels whose cell-probability logit exceeds `cellprob_threshold` (Cellpose's own foreground test);
- elevation: the watershed baseline's (distance from the nuclei, minus the microtubule + ER signal) minus
  `probability_weight` x the cell probability plus `flow_divergence_weight` x the divergence of the predicted
  flows (which point to cell centres, so they diverge on the border between two touching cells): borders follow
  the dim gaps and the network's edges.

Only one pass of the cell network is needed and no flow dynamics, which makes this faster than `flows` as well
as closer to the reference on held-out real fields (BENCHMARKS.md, "Segmentation").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from segmentation.watershed import cytoplasm_signal, flood_cells_from_nuclei

REFERENCE_SIZE = 512


@dataclass(frozen=True)
class SeededCellSettings:
    """How cells are grown from nuclei; lengths in px of a `REFERENCE_SIZE` field, scaled with the image.

    cellprob_threshold: a pixel can belong to a cell when its cell-probability logit is above this (Cellpose's
        default foreground threshold is 0).
    probability_weight: weight of the cell probability (0-1) in the watershed elevation; 0 ignores it.
    flow_divergence_weight: weight of the flows' divergence (scaled to about 1 on clear borders); 0 ignores it.
    nucleus_distance_weight, cytoplasm_sigma_px, closing_radius_px: as in `segmentation.watershed.WatershedConfig`.
    """

    cellprob_threshold: float = 0.0
    probability_weight: float = 1.0
    flow_divergence_weight: float = 1.0
    nucleus_distance_weight: float = 1.0
    cytoplasm_sigma_px: float = 2.0
    closing_radius_px: float = 3.0

    def __post_init__(self) -> None:
        for name in ("probability_weight", "flow_divergence_weight", "nucleus_distance_weight", "cytoplasm_sigma_px", "closing_radius_px"):
            if getattr(self, name) < 0:
                raise ValueError(f"SeededCellSettings.{name} must be >= 0, got {getattr(self, name)}")


def median_nucleus_diameter(nuclei: np.ndarray) -> float:
    """Median equivalent diameter of the nucleus instances of an `H,W` label mask (ValueError when it has none)."""
    areas = np.bincount(nuclei.ravel())[1:]
    areas = areas[areas > 0]
    if not areas.size:
        raise ValueError("the nucleus mask has no nuclei")
    return float(2.0 * np.sqrt(np.median(areas) / np.pi))


def grow_cells_from_nuclei(image_chw: np.ndarray, nuclei: np.ndarray, cell_logits: np.ndarray,
                           settings: SeededCellSettings, flow_divergence: np.ndarray | None = None) -> np.ndarray:
    """`H,W` int32 cells of a `4,H,W` field: cell k is grown from nucleus k of `nuclei` (`H,W` instance labels)
    over the pixels whose `cell_logits` (`H,W`, Cellpose's cell-probability logits at the image's size) exceed
    the threshold. `flow_divergence` (`H,W`, `CellposeNetRunner.cell_evidence`) is optional. Distances are in
    units of the field's median nucleus diameter. No nuclei, no cells.
    """
    maps = {"nuclei": nuclei, "cell logits": cell_logits, "flow divergence": flow_divergence}
    for name, array in maps.items():
        if array is not None and array.shape != image_chw.shape[1:]:
            raise ValueError(f"{name} {array.shape} must match the field's {image_chw.shape[1:]}")
    if nuclei.max() == 0:
        return np.zeros(nuclei.shape, np.int32)
    scale = min(image_chw.shape[1:]) / REFERENCE_SIZE
    signal = cytoplasm_signal(image_chw, settings.cytoplasm_sigma_px * scale)
    probability = 1.0 / (1.0 + np.exp(-np.clip(cell_logits, -30, 30)))
    extra = -settings.probability_weight * probability
    if flow_divergence is not None:
        extra = extra + settings.flow_divergence_weight * flow_divergence
    return flood_cells_from_nuclei(
        nuclei.astype(np.int32), cell_logits > settings.cellprob_threshold, signal,
        median_nucleus_diameter(nuclei), settings.closing_radius_px * scale,
        settings.nucleus_distance_weight, extra_elevation=extra)
