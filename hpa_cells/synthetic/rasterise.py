"""Rasterising a planned synthetic field: instance masks, distance maps and per-cell geometry.

Pixels go to the cell whose shape is nearest in normalised distance, which gives touching cells with
smooth shared borders and ruffled free edges; dividing cells are rounded and sit on top of their
neighbours. Arrays are `H,W`; points are `(y, x)`.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import cv2
import numpy as np
from scipy import ndimage

from hpa_cells.synthetic.cell_lines import cell_line_by_name, length_scale
from hpa_cells.synthetic.cell_plans import CellPlan
from hpa_cells.synthetic.drawing import smooth_noise
from hpa_cells.synthetic.field_layout import CellGeometry, FieldLayout, LayoutError
from hpa_cells.synthetic.shapes import BlobShape

logger = logging.getLogger(__name__)

DIVIDING_PRIORITY = 0.55
"""Normalised distances of dividing cells are scaled by this, so a rounded mitotic cell wins overlaps."""


MAX_CELLS = 254
"""Most cells one field may plan (owner maps are uint8)."""


def _box(centre_yx: tuple[float, float], reach: float, size: int) -> tuple[int, int, int, int]:
    """Clipped integer box (y0, y1, x0, x1) around a centre."""
    y0 = max(math.floor(centre_yx[0] - reach), 0)
    x0 = max(math.floor(centre_yx[1] - reach), 0)
    y1 = min(math.ceil(centre_yx[0] + reach) + 1, size)
    x1 = min(math.ceil(centre_yx[1] + reach) + 1, size)
    return y0, y1, x0, x1


def _grid(y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinate vectors (`h,1`, `1,w`) of a box, float32."""
    return (
        np.arange(y0, y1, dtype=np.float32)[:, None],
        np.arange(x0, x1, dtype=np.float32)[None, :],
    )


def _rasterise_shape(
    shape: BlobShape, origin_yx: tuple[int, int], crop_hw: tuple[int, int]
) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """(slices into the crop, boolean footprint) of `shape` in a crop starting at `origin_yx`; None if outside."""
    reach = shape.reach
    y0 = max(int(np.floor(shape.centre_yx[0] - reach)) - origin_yx[0], 0)
    x0 = max(int(np.floor(shape.centre_yx[1] - reach)) - origin_yx[1], 0)
    y1 = min(int(np.ceil(shape.centre_yx[0] + reach)) + 1 - origin_yx[0], crop_hw[0])
    x1 = min(int(np.ceil(shape.centre_yx[1] + reach)) + 1 - origin_yx[1], crop_hw[1])
    if y1 <= y0 or x1 <= x0:
        return None
    ys, xs = _grid(y0 + origin_yx[0], y1 + origin_yx[0], x0 + origin_yx[1], x1 + origin_yx[1])
    return (slice(y0, y1), slice(x0, x1)), shape.distance(ys, xs) < 1.0


def _boundaries(owner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(`H,W` bool pixels with a 4-neighbour of another owner, `H,W` bool cell pixels next to another cell).

    `owner` is uint8 (0 = background). The image border is not a boundary (owners are replicated beyond it).
    """
    kernel = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    larger = cv2.dilate(owner, kernel, borderType=cv2.BORDER_REPLICATE)
    smaller = cv2.erode(owner, kernel, borderType=cv2.BORDER_REPLICATE)
    edge = (larger != owner) | (smaller != owner)
    # for "another cell", background must not count as a smaller neighbour: lift it to 255 first
    lifted = np.where(owner == 0, np.uint8(255), owner)
    smaller_cell = cv2.erode(lifted, kernel, borderType=cv2.BORDER_REPLICATE)
    contact = (owner != 0) & ((larger != owner) | (smaller_cell != lifted))
    return edge, contact


def _label_counts(labels: np.ndarray) -> np.ndarray:
    """`256,` pixel count per label of a uint8 label map."""
    return cv2.calcHist([labels], [0], None, [256], [0, 256]).ravel().astype(np.int64)


def _distance_to(sources: np.ndarray) -> np.ndarray:
    """`H,W` float32 distance (px, 3x3 chamfer approximation of Euclidean) to the nearest True pixel."""
    return cv2.distanceTransform((~sources).view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_3)


def rasterise_field(plans: list[CellPlan], size: int, rng: np.random.Generator) -> FieldLayout:
    """Turn cell plans into instance masks, field-wide distance maps and per-cell geometry.

    Each pixel goes to the cell with the smallest normalised distance among those whose shape covers
    it (dividing cells weighted by `DIVIDING_PRIORITY`). Fragments cut off from a cell's main part,
    slivers below a minimum area, and cells whose nucleus vanished although they do not touch the
    border are removed; the rest are numbered 1..N in plan order. Nuclei are kept one pixel inside
    their cell's boundary.
    """
    if not plans:
        raise LayoutError(f"no cells planned for a {size} px field")
    scale = length_scale(size)
    line = cell_line_by_name(plans[0].line)
    owner = _claim_pixels(plans, size, rng, scale)
    min_area = max(8.0, 0.03 * np.pi * (line.radius * scale) ** 2)
    boxes = _keep_main_parts(owner, plans, min_area)
    nucleus_owner = _place_nuclei(owner, plans, size)
    kept, touches = _surviving_cells(owner, nucleus_owner, len(plans), min_area, size)
    renumber = np.zeros(256, dtype=np.uint8)
    renumber[kept] = np.arange(1, kept.size + 1)
    cell_ids = cv2.LUT(owner, renumber)
    nucleus_ids = cv2.LUT(nucleus_owner, renumber)
    cell_mask = cell_ids.astype(np.uint16)
    nucleus_mask = nucleus_ids.astype(np.uint16)

    edge, contact = _boundaries(cell_ids)
    padded_edge = np.pad(edge, 1, mode="constant", constant_values=False)
    edge_distance = np.ascontiguousarray(_distance_to(padded_edge)[1:-1, 1:-1])
    has_nucleus = nucleus_ids > 0
    nucleus_distance = (
        _distance_to(has_nucleus) if has_nucleus.any() else np.full((size, size), np.float32(size))
    )
    nucleus_depth = _distance_to(~has_nucleus)
    layout = FieldLayout(
        size=size,
        line=line,
        cells=(),
        cell_mask=cell_mask,
        nucleus_mask=nucleus_mask,
        edge_distance=edge_distance,
        nucleus_distance=nucleus_distance,
        nucleus_depth=nucleus_depth,
        contact=contact,
    )
    pad = max(4, int(round(0.3 * line.radius * scale)))
    cells = tuple(
        _cell_geometry(
            layout, cell_id, plans[plan_index - 1], boxes[plan_index - 1], pad, bool(touches[plan_index])
        )
        for cell_id, plan_index in enumerate(kept, start=1)
    )
    return dataclasses.replace(layout, cells=cells)


def _claim_pixels(plans: list[CellPlan], size: int, rng: np.random.Generator, scale: float) -> np.ndarray:
    """`H,W` uint8 owner map: each pixel to the covering plan (1-based) with the smallest weighted distance."""
    ruffle_field = smooth_noise(rng, (size, size), max(3.0 * scale, 1.0))
    # Two coarse fields; each cell mixes them at its own angle, so shared borders wobble independently.
    coarse_a = smooth_noise(rng, (size, size), max(7.0 * scale, 1.5))
    coarse_b = smooth_noise(rng, (size, size), max(7.0 * scale, 1.5))
    mixing = rng.uniform(0, 2 * np.pi, len(plans))
    if len(plans) > MAX_CELLS:
        raise LayoutError(f"{len(plans)} cells planned; at most {MAX_CELLS} fit the uint8 owner map")
    best = np.full((size, size), np.inf, dtype=np.float32)
    owner = np.zeros((size, size), dtype=np.uint8)
    for index, plan in enumerate(plans, start=1):
        y0, y1, x0, x1 = _box(plan.centre_yx, plan.reach, size)
        if y1 <= y0 or x1 <= x0:
            continue
        ys, xs = _grid(y0, y1, x0, x1)
        distance = plan.distance(ys, xs)
        if plan.ruffle > 0:
            mix = mixing[index - 1]
            distance += np.float32(plan.ruffle) * ruffle_field[y0:y1, x0:x1]
            distance += np.float32(0.035 * np.cos(mix)) * coarse_a[y0:y1, x0:x1]
            distance += np.float32(0.035 * np.sin(mix)) * coarse_b[y0:y1, x0:x1]
        weight = np.float32(DIVIDING_PRIORITY if plan.dividing else 1.0)
        effective = np.where(distance < 1.0, distance * weight, np.float32(np.inf))
        better = effective < best[y0:y1, x0:x1]
        np.copyto(best[y0:y1, x0:x1], effective, where=better)
        np.copyto(owner[y0:y1, x0:x1], np.uint8(index), where=better)
    return owner


def _keep_main_parts(
    owner: np.ndarray, plans: list[CellPlan], min_area: float
) -> list[tuple[slice, slice] | None]:
    """Drop slivers below `min_area` and keep each cell's main part (the one holding its first nucleus
    centre, else the largest), in place; returns each plan's bounding box before the removals."""
    boxes = ndimage.find_objects(owner, max_label=len(plans))
    areas = _label_counts(owner)[: len(plans) + 1]
    for index, box in enumerate(boxes, start=1):
        if box is None:
            continue
        if areas[index] < min_area:
            owner[box][owner[box] == index] = 0
            continue
        region = owner[box] == index
        n_found, components = cv2.connectedComponents(region.view(np.uint8), connectivity=8)
        if n_found > 2:
            cy, cx = (int(round(v)) for v in plans[index - 1].nuclei[0].centre_yx)
            ry, rx = cy - box[0].start, cx - box[1].start
            inside = 0 <= ry < region.shape[0] and 0 <= rx < region.shape[1]
            label = components[ry, rx] if inside else 0
            if label == 0:
                label = int(np.argmax(np.bincount(components.ravel(), minlength=n_found)[1:])) + 1
            owner[box][region & (components != label)] = 0
    return boxes


def _place_nuclei(owner: np.ndarray, plans: list[CellPlan], size: int) -> np.ndarray:
    """`H,W` uint8 nucleus owner map: each plan's nuclear shapes, on its own pixels, off every cell boundary."""
    edge, _ = _boundaries(owner)  # nuclei stay off every cell boundary
    nucleus_owner = np.zeros((size, size), dtype=np.uint8)
    for index, plan in enumerate(plans, start=1):
        for shape in plan.nuclei:
            placed = _rasterise_shape(shape, (0, 0), (size, size))
            if placed is not None:
                rows_cols, footprint = placed
                target = nucleus_owner[rows_cols]
                keep = footprint & (owner[rows_cols] == index) & ~edge[rows_cols]
                target[keep] = index
    return nucleus_owner


def _surviving_cells(
    owner: np.ndarray, nucleus_owner: np.ndarray, n_plans: int, min_area: float, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """(plan ids kept, in order; per plan id "touches the image border"): slivers and cells whose
    nucleus was lost inside the frame are dropped. Raises `LayoutError` when none survives."""
    areas = _label_counts(owner)[: n_plans + 1]
    nucleus_areas = _label_counts(nucleus_owner)[: n_plans + 1]
    border_ids = np.unique(np.concatenate([owner[0], owner[-1], owner[:, 0], owner[:, -1]]))
    touches = np.zeros(n_plans + 1, dtype=bool)
    touches[border_ids] = True
    keep = (areas >= min_area) & ((nucleus_areas > 0) | touches)
    keep[0] = False
    dropped = np.flatnonzero((areas > 0) & ~keep)
    dropped = dropped[dropped > 0]
    if dropped.size:
        logger.debug("dropping %d cells (slivers or nucleus lost inside the frame)", dropped.size)
    kept = np.flatnonzero(keep)
    if kept.size == 0:
        raise LayoutError(f"no cell survived rasterisation of a {size} px field with {n_plans} planned cells")
    return kept, touches


def _cell_geometry(
    layout: FieldLayout,
    cell_id: int,
    plan: CellPlan,
    box: tuple[slice, slice],
    pad: int,
    touches_border: bool,
) -> CellGeometry:
    """One cell's crops of the field maps: its bounding `box` (before removals, so it still encloses
    the cell) grown by `pad`."""
    size = layout.size
    y0, y1 = max(box[0].start - pad, 0), min(box[0].stop + pad, size)
    x0, x1 = max(box[1].start - pad, 0), min(box[1].stop + pad, size)
    rows, cols = slice(y0, y1), slice(x0, x1)
    mask = layout.cell_mask[rows, cols] == cell_id
    nucleus = layout.nucleus_mask[rows, cols] == cell_id
    nucleus_area = int(nucleus.sum())
    if len(plan.nuclei) == 1:
        n_nuclei = int(nucleus_area > 0)
    else:
        n_nuclei = 0
        for shape in plan.nuclei:
            placed = _rasterise_shape(shape, (y0, x0), mask.shape)
            n_nuclei += int(placed is not None and bool((placed[1] & nucleus[placed[0]]).any()))
    nucleus_complete = all(
        shape.reach
        < min(
            shape.centre_yx[0],
            shape.centre_yx[1],
            size - 1 - shape.centre_yx[0],
            size - 1 - shape.centre_yx[1],
        )
        for shape in plan.nuclei
    )
    return CellGeometry(
        cell_id=cell_id,
        plan=plan,
        origin_yx=(y0, x0),
        mask=mask,
        nucleus=nucleus,
        contact=layout.contact[rows, cols] & mask,
        edge_distance=layout.edge_distance[rows, cols],
        nucleus_distance=layout.nucleus_distance[rows, cols],
        nucleus_depth=layout.nucleus_depth[rows, cols],
        area=int(mask.sum()),
        nucleus_area=nucleus_area,
        n_nuclei=n_nuclei,
        touches_border=touches_border,
        nucleus_complete=nucleus_complete,
    )
