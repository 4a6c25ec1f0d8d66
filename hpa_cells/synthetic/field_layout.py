"""The rasterised field of the synthetic generator: per-cell geometry and the field-wide maps.

`FieldLayout` is what `rasterise.rasterise_field` returns and every later stage (anatomy, labels,
channels, patterns) reads: instance masks, distance maps, and one `CellGeometry` per cell.
Arrays are `H,W`; points are `(y, x)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from hpa_cells.synthetic.cell_lines import CellLine
from hpa_cells.synthetic.cell_plans import CellPlan, Stage


class LayoutError(RuntimeError):
    """A field layout cannot satisfy its constraints (e.g. too few interior cells for the dividing cells asked)."""


@dataclass(frozen=True)
class CellGeometry:
    """One rasterised cell: its plan plus crops (the cell's bounding box and a margin) of the field maps.

    The crop starts at `origin_yx` in the image. `mask` is the cell, `nucleus` its nuclei / chromatin,
    `contact` the cell's pixels that touch another cell. The distance crops are views of the field-wide
    maps (see `FieldLayout`), so outside `mask` they describe neighbouring cells.
    """

    cell_id: int
    plan: CellPlan
    origin_yx: tuple[int, int]
    mask: np.ndarray
    nucleus: np.ndarray
    contact: np.ndarray
    edge_distance: np.ndarray
    nucleus_distance: np.ndarray
    nucleus_depth: np.ndarray
    area: int
    nucleus_area: int
    n_nuclei: int
    touches_border: bool
    nucleus_complete: bool

    @property
    def shape(self) -> tuple[int, int]:
        return self.mask.shape

    @property
    def stage(self) -> Stage:
        return self.plan.stage

    @property
    def dividing(self) -> bool:
        return self.plan.dividing

    @property
    def cytoplasm(self) -> np.ndarray:
        return self.mask & ~self.nucleus

    def crop_slices(self) -> tuple[slice, slice]:
        """Slices of the image that this cell's crop covers."""
        y0, x0 = self.origin_yx
        return slice(y0, y0 + self.shape[0]), slice(x0, x0 + self.shape[1])

    def centroid_yx(self) -> tuple[float, float]:
        """Centroid of the visible cell in image coordinates."""
        moments = cv2.moments(self.mask.view(np.uint8), binaryImage=True)
        return moments["m01"] / moments["m00"] + self.origin_yx[0], moments["m10"] / moments[
            "m00"
        ] + self.origin_yx[1]


@dataclass(frozen=True)
class FieldLayout:
    """A rasterised field: its cells, the `H,W` uint16 instance masks and field-wide distance maps.

    `cell_mask` labels cells 1..N (N = len(cells), ids contiguous, in `cells` order); `nucleus_mask`
    labels each nucleus pixel with the id of the cell it belongs to. `edge_distance` is the distance
    (px) to the nearest cell-boundary pixel (boundary pixels are 0; the image border is not a boundary),
    `nucleus_distance` the distance to the nearest nucleus pixel (0 inside nuclei), `nucleus_depth` the
    depth inside a nucleus (0 outside), `contact` marks cell pixels next to another cell.
    """

    size: int
    line: CellLine
    cells: tuple[CellGeometry, ...]
    cell_mask: np.ndarray
    nucleus_mask: np.ndarray
    edge_distance: np.ndarray
    nucleus_distance: np.ndarray
    nucleus_depth: np.ndarray
    contact: np.ndarray
