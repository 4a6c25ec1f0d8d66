"""Sub-cellular landmarks of a synthetic field, shared by the reference channels and the green patterns.

For every cell of a rasterised field this draws where its nucleoli, centrosomes (MTOC), microtubule
fibres, mitotic spindle and cytokinetic bridge are, plus the field's ER network texture. The blue, red
and yellow channels are rendered from these landmarks, and the green patterns are placed relative to
the same landmarks (nucleoli, Golgi next to the MTOC, microtubules along the red fibres, spindle and
bridge of dividing cells), which keeps the channels consistent.

Landmarks are computed for all cells at once (`FieldAnatomy`, image coordinates); `FieldAnatomy.cell`
cuts out one cell's view (`CellAnatomy`, crop coordinates) for the pattern generators. Points are
`(y, x)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from hpa_cells.synthetic.cell_lines import length_scale
from hpa_cells.synthetic.drawing import PolylineSet, gaussian_spots
from hpa_cells.synthetic.field_layout import CellGeometry, FieldLayout

UNIFORM_BYTE_STD = float(np.sqrt((256.0**2 - 1) / 12.0))
"""Standard deviation of uniformly random bytes."""

NUCLEOLUS_CANDIDATES = 24
"""Random candidate positions tried per nucleolus (rejection sampling inside the nucleus)."""


@dataclass(frozen=True)
class CellAnatomy:
    """Landmarks of one cell in its crop frame (see the module docstring).

    `nucleoli` is `M,3` (y, x, radius) and `nucleoli_map` their soft `h,w` footprint in [0, 1];
    `centrosomes` is `K,2` (the centriole pair of an interphase cell, the two spindle poles of a
    dividing one); `golgi_angle` points from the nucleus centre towards the MTOC; `fibres` are the
    microtubules, `spindle` the spindle fibres of a dividing cell, `bridge` the two ends of the
    cytokinetic bridge (telophase only); `er_network` is the reticular ER texture in [0, 1].
    """

    geometry: CellGeometry
    scale: float
    nucleus_centre: np.ndarray
    nucleus_radius: float
    nucleoli: np.ndarray
    nucleoli_map: np.ndarray
    centrosomes: np.ndarray
    golgi_angle: float
    fibres: PolylineSet
    spindle: PolylineSet
    bridge: np.ndarray | None
    er_network: np.ndarray

    @property
    def mtoc(self) -> np.ndarray:
        """`2,` the microtubule organising centre (mean of the centrosomes)."""
        return self.centrosomes.mean(axis=0)

    @property
    def radius(self) -> float:
        """The cell's nominal radius in px."""
        return self.geometry.plan.radius


@dataclass(frozen=True)
class FieldAnatomy:
    """Landmarks of all cells of a field, image coordinates; arrays are indexed by cell (id - 1).

    `nucleoli` is `M,4` (cell index, y, x, radius); `fibre_cell` / `spindle_cell` give the cell index
    of each line in `fibres` / `spindle`; `bridges` maps a cell index to its `2,2` bridge ends.
    `nucleoli_map` and `er_network` are `H,W` float32 in [0, 1].
    """

    layout: FieldLayout
    nucleus_centres: np.ndarray
    nucleus_radii: np.ndarray
    centrosomes: np.ndarray
    golgi_angles: np.ndarray
    nucleoli: np.ndarray
    nucleoli_map: np.ndarray
    fibres: PolylineSet
    fibre_cell: np.ndarray
    spindle: PolylineSet
    spindle_cell: np.ndarray
    bridges: dict[int, np.ndarray]
    er_network: np.ndarray

    def cell(self, index: int) -> CellAnatomy:
        """The landmarks of cell `index` (0-based, i.e. cell id - 1) in its crop frame."""
        geometry = self.layout.cells[index]
        origin = np.array(geometry.origin_yx, dtype=np.float64)
        rows, cols = geometry.crop_slices()

        def subset(lines: PolylineSet, owners: np.ndarray) -> PolylineSet:
            chosen = owners == index
            return PolylineSet(lines.points_yx[chosen] - origin, lines.lengths[chosen])

        nucleoli = self.nucleoli[self.nucleoli[:, 0] == index, 1:].copy()
        nucleoli[:, :2] -= origin
        bridge = self.bridges.get(index)
        return CellAnatomy(
            geometry=geometry,
            scale=length_scale(self.layout.size),
            nucleus_centre=self.nucleus_centres[index] - origin,
            nucleus_radius=float(self.nucleus_radii[index]),
            nucleoli=nucleoli,
            nucleoli_map=self.nucleoli_map[rows, cols],
            centrosomes=self.centrosomes[index] - origin,
            golgi_angle=float(self.golgi_angles[index]),
            fibres=subset(self.fibres, self.fibre_cell),
            spindle=subset(self.spindle, self.spindle_cell),
            bridge=None if bridge is None else bridge - origin,
            er_network=self.er_network[rows, cols],
        )


def er_network_field(rng: np.random.Generator, size: int) -> np.ndarray:
    """`H,W` float32 reticular texture in [0, 1]: thin bright tubules along the zero lines of a smooth
    random field (two scales), as a stand-in for the ER's polygonal network of tubules and sheets."""
    scale = length_scale(size)
    raw = np.frombuffer(rng.bytes(size * size), dtype=np.uint8).reshape(size, size).astype(np.float32)
    raw -= np.float32(127.5)
    fine = cv2.GaussianBlur(raw, (0, 0), sigmaX=max(1.3 * scale, 0.8))
    # the coarse scale is blurred at half resolution and enlarged: same look, a quarter of the work
    half = max(size // 2, 1)
    small = cv2.resize(raw[::-1, ::-1], (half, half), interpolation=cv2.INTER_AREA)
    coarse = cv2.resize(
        cv2.GaussianBlur(small, (0, 0), sigmaX=max(1.3 * scale, 0.6)),
        (size, size),
        interpolation=cv2.INTER_LINEAR,
    )
    # standard deviation of uniform bytes (73.9) after a Gaussian blur of width sigma: 73.9 / (2 sigma sqrt(pi))
    fine *= np.float32(2.0 * max(1.3 * scale, 0.8) * np.sqrt(np.pi) / (0.45 * UNIFORM_BYTE_STD))
    coarse *= np.float32(1.0 / (0.45 * float(coarse.std()) + 1e-6))
    network = np.exp(-(fine * fine))
    network += np.float32(0.6) * np.exp(-(coarse * coarse))
    network *= np.float32(1.0 / 1.2)
    return np.minimum(network, np.float32(1.0))


def _lookup(labels: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Values of the `H,W` map `labels` at rounded points (`...,2`); -1 outside the image."""
    height, width = labels.shape
    iy = np.rint(points[..., 0]).astype(np.intp)
    ix = np.rint(points[..., 1]).astype(np.intp)
    inside = (iy >= 0) & (iy < height) & (ix >= 0) & (ix < width)
    values = np.full(iy.shape, -1, dtype=np.int64)
    values[inside] = labels[iy[inside], ix[inside]]
    return values


def _first_exit(
    labels: np.ndarray, ids: np.ndarray, origins: np.ndarray, angles: np.ndarray, reach: float
) -> np.ndarray:
    """Per ray, the distance from `origins` (`n,2`) along `angles` to the first pixel whose label is not `ids`."""
    steps = np.arange(0.0, reach, 0.5)
    directions = np.stack([np.sin(angles), np.cos(angles)], axis=1)
    points = origins[:, None, :] + steps[None, :, None] * directions[:, None, :]
    outside = _lookup(labels, points) != ids[:, None]
    first = np.where(outside.any(axis=1), np.argmax(outside, axis=1), len(steps) - 1)
    return steps[first]


FIBRE_CHUNK = 16
"""Steps grown per round in `grow_fibres`; fibres that left their cell stop being extended."""


def grow_fibres(
    rng: np.random.Generator,
    labels: np.ndarray,
    owners: np.ndarray,
    origins: np.ndarray,
    angles: np.ndarray,
    step: float,
    max_steps: int,
    wiggle: float,
) -> PolylineSet:
    """Random-walk poly-lines from `origins` (`n,2`) at `angles`; line i stops where it first leaves the
    pixels labelled `owners[i]` in the `H,W` map `labels` (or after `max_steps` steps).

    Direction drifts by a per-fibre curvature plus per-step noise (`wiggle` rad). All fibres of all
    cells grow together, `FIBRE_CHUNK` steps per round, and only fibres still inside keep growing.
    """
    count = len(angles)
    if count == 0:
        return PolylineSet.empty()
    points = np.empty((count, max_steps + 1, 2), dtype=np.float32)
    points[:, 0] = origins
    lengths = np.ones(count, dtype=np.intp)
    curvature = rng.normal(0.0, 0.35 * wiggle, count).astype(np.float32)
    heading = angles.astype(np.float32)
    active = np.arange(count)
    done = 0
    while active.size and done < max_steps:
        chunk = min(FIBRE_CHUNK, max_steps - done)
        turns = rng.normal(0.0, wiggle, (active.size, chunk)).astype(np.float32) + curvature[active, None]
        headings = heading[active, None] + np.cumsum(turns, axis=1)
        heading[active] = headings[:, -1]
        start = points[active, done]
        ys = start[:, 0:1] + np.cumsum(np.float32(step) * np.sin(headings), axis=1)
        xs = start[:, 1:2] + np.cumsum(np.float32(step) * np.cos(headings), axis=1)
        points[active, done + 1 : done + 1 + chunk, 0] = ys
        points[active, done + 1 : done + 1 + chunk, 1] = xs
        inside = _lookup(labels, np.stack([ys, xs], axis=-1)) == owners[active, None]
        stays = inside.all(axis=1)
        lengths[active] = done + 1 + np.where(stays, chunk, np.argmin(inside, axis=1))
        active = active[stays]
        done += chunk
    used = int(lengths.max())
    # points past a fibre's end were never written: repeat its last point there
    index = np.minimum(np.arange(used)[None, :], lengths[:, None] - 1)
    return PolylineSet(points[np.arange(count)[:, None], index].astype(np.float64), lengths)


def _bowed_line(start: np.ndarray, end: np.ndarray, bow: float, points: int = 7) -> np.ndarray:
    """`points,2` quadratic curve from `start` to `end`, bulging sideways by `bow` px at its middle."""
    t = np.linspace(0.0, 1.0, points)[:, None]
    direction = end - start
    normal = np.array([direction[1], -direction[0]]) / (np.hypot(*direction) + 1e-9)
    return start + t * direction + (4 * t * (1 - t)) * bow * normal


def _first_per_group(flags: np.ndarray, groups: np.ndarray, limits: np.ndarray) -> np.ndarray:
    """Mask of the first `limits[g]` True entries of `flags` within each contiguous group `groups` (sorted)."""
    running = np.cumsum(flags)
    starts = np.searchsorted(groups, groups, side="left")
    before = np.where(starts > 0, running[starts - 1], 0)
    return flags & (running - before <= limits)


def _nucleoli(
    rng: np.random.Generator, layout: FieldLayout, centres: np.ndarray, radii: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """2-4 nucleoli per interphase nucleus where it is deep enough: (`M,4` cell/y/x/r, `H,W` soft map).

    Positions are found by rejection sampling around each nucleus centre, for all cells at once.
    """
    scale = length_scale(layout.size)
    size = layout.size
    cells = [i for i, cell in enumerate(layout.cells) if not cell.dividing and cell.nucleus_area > 0]
    if not cells:
        return np.zeros((0, 4)), np.zeros((size, size), dtype=np.float32)
    index = np.asarray(cells)
    n_nuclei = np.array([max(layout.cells[i].n_nuclei, 1) for i in cells])
    counts = rng.integers(2, 5, len(cells)) * n_nuclei
    radius = np.maximum(np.clip(0.16 * radii[index], 1.2 * scale, 4.5 * scale), 0.9)
    spread = radii[index] * np.where(n_nuclei > 1, 1.6, 1.0)
    group = np.repeat(np.arange(len(cells)), NUCLEOLUS_CANDIDATES * counts)
    candidates = centres[index][group] + rng.uniform(-1.0, 1.0, (len(group), 2)) * spread[group][:, None]
    ids = _lookup(layout.nucleus_mask, candidates)
    iy = np.clip(np.rint(candidates[:, 0]).astype(np.intp), 0, size - 1)
    ix = np.clip(np.rint(candidates[:, 1]).astype(np.intp), 0, size - 1)
    own = ids == np.array([layout.cells[i].cell_id for i in cells])[group]
    deep = own & (layout.nucleus_depth[iy, ix] > radius[group] + 1.0)
    shallow_groups = np.bincount(group, weights=deep, minlength=len(cells)) == 0
    usable = np.where(shallow_groups[group], own, deep)  # tiny nuclei: anywhere inside
    chosen = _first_per_group(usable, group, counts[group])
    owner = group[chosen]
    nucleoli = np.column_stack(
        [index[owner], candidates[chosen], radius[owner] * rng.uniform(0.7, 1.3, owner.size)]
    )
    # a second, offset lobe per nucleolus makes them irregular rather than round
    lobes = nucleoli[:, 1:3] + rng.normal(0.0, 1.0, (len(nucleoli), 2)) * (0.55 * nucleoli[:, 3:4])
    sigma = 0.7 * float(np.median(nucleoli[:, 3])) if len(nucleoli) else 1.0
    amplitudes = np.concatenate([np.ones(len(nucleoli)), np.full(len(nucleoli), 0.7)])
    footprint = gaussian_spots((size, size), np.concatenate([nucleoli[:, 1:3], lobes]), sigma, amplitudes)
    footprint = np.minimum(footprint * np.float32(1.4), np.float32(1.0)) * (layout.nucleus_mask > 0)
    return nucleoli, footprint.astype(np.float32)


def build_field_anatomy(rng: np.random.Generator, layout: FieldLayout) -> FieldAnatomy:
    """Draw the landmarks of every cell of a field (see `FieldAnatomy`).

    The steps below draw from `rng` in a fixed order (nucleoli, MTOC, interphase fibres, dividing-cell
    fibres and spindles, fibre growth, ER network); keep it, so a seed keeps its images.
    """
    size = layout.size
    scale = length_scale(size)
    cells = layout.cells
    ids = np.array([cell.cell_id for cell in cells], dtype=np.int64)
    nucleus_centres, nucleus_radii, cytoplasm_centres = _cell_centres(cells)
    nucleoli, nucleoli_map = _nucleoli(rng, layout, nucleus_centres, nucleus_radii)
    golgi_angles, mtoc = _mtoc(rng, layout, ids, nucleus_centres, cytoplasm_centres)
    pair_angle = rng.uniform(0, 2 * np.pi, len(cells))
    half = max(0.7 * scale, 0.5) * np.stack([np.sin(pair_angle), np.cos(pair_angle)], axis=1)
    centrosomes = np.stack([mtoc - half, mtoc + half], axis=1)
    seeds = _interphase_fibre_seeds(rng, cells, mtoc, scale)
    spindle_lines, spindle_owner, bridges = _dividing_structures(rng, cells, centrosomes, seeds)
    angles, origins, owners = seeds
    radii = np.array([cell.plan.radius for cell in cells])
    step = max(2.0 * scale, 1.0)
    n_steps = int(np.ceil(3.2 * float(radii.max()) / step)) + 2
    if sum(len(a) for a in angles):
        owner_index = np.concatenate(owners)
        fibres = grow_fibres(
            rng,
            layout.cell_mask,
            ids[owner_index],
            np.concatenate(origins),
            np.concatenate(angles),
            step=step,
            max_steps=n_steps,
            wiggle=0.08,
        )
    else:
        owner_index, fibres = np.zeros(0, dtype=np.intp), PolylineSet.empty()
    spindle = PolylineSet.from_array(np.stack(spindle_lines)) if spindle_lines else PolylineSet.empty()
    return FieldAnatomy(
        layout=layout,
        nucleus_centres=nucleus_centres,
        nucleus_radii=nucleus_radii,
        centrosomes=centrosomes,
        golgi_angles=golgi_angles,
        nucleoli=nucleoli,
        nucleoli_map=nucleoli_map,
        fibres=fibres,
        fibre_cell=owner_index,
        spindle=spindle,
        spindle_cell=np.asarray(spindle_owner, dtype=np.intp),
        bridges=bridges,
        er_network=er_network_field(rng, size),
    )


def _cell_centres(cells: tuple[CellGeometry, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(`N,2` nucleus centres, `N,` nucleus radii, `N,2` cytoplasm centres) in image coordinates.

    A nucleus outside the frame falls back to the planned one; a cell without cytoplasm to its nucleus.
    """
    n_cells = len(cells)
    nucleus_centres = np.zeros((n_cells, 2))
    nucleus_radii = np.zeros(n_cells)
    cytoplasm_centres = np.zeros((n_cells, 2))
    for index, cell in enumerate(cells):
        origin = np.array(cell.origin_yx, dtype=np.float64)
        moments = cv2.moments(cell.nucleus.view(np.uint8), binaryImage=True)
        if moments["m00"] > 0:
            nucleus_centres[index] = origin + [
                moments["m01"] / moments["m00"],
                moments["m10"] / moments["m00"],
            ]
            nucleus_radii[index] = np.sqrt(moments["m00"] / np.pi / max(cell.n_nuclei, 1))
        else:  # nucleus outside the frame: use the planned one
            nucleus_centres[index] = cell.plan.nuclei[0].centre_yx
            nucleus_radii[index] = cell.plan.nuclei[0].radius
        moments = cv2.moments(cell.cytoplasm.view(np.uint8), binaryImage=True)
        if moments["m00"] > 0:
            cytoplasm_centres[index] = origin + [
                moments["m01"] / moments["m00"],
                moments["m10"] / moments["m00"],
            ]
        else:
            cytoplasm_centres[index] = nucleus_centres[index]
    return nucleus_centres, nucleus_radii, cytoplasm_centres


def _mtoc(
    rng: np.random.Generator,
    layout: FieldLayout,
    ids: np.ndarray,
    nucleus_centres: np.ndarray,
    cytoplasm_centres: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """(`N,` Golgi angles, `N,2` MTOC positions): interphase MTOC just outside the nucleus, on the side
    with more cytoplasm."""
    cells = layout.cells
    n_cells = len(cells)
    scale = length_scale(layout.size)
    radii = np.array([cell.plan.radius for cell in cells])
    towards = cytoplasm_centres - nucleus_centres
    base = np.where(
        np.hypot(towards[:, 0], towards[:, 1]) > 1.0,
        np.arctan2(towards[:, 0], towards[:, 1]),
        rng.uniform(-np.pi, np.pi, n_cells),
    )
    golgi_angles = base + rng.normal(0.0, 0.6, n_cells)
    reach = 3.0 * float(radii.max())
    leave_nucleus = _first_exit(layout.nucleus_mask, ids, nucleus_centres, golgi_angles, reach)
    leave_cell = _first_exit(layout.cell_mask, ids, nucleus_centres, golgi_angles, reach)
    distance = np.minimum(leave_nucleus + max(1.6 * scale, 1.0), np.maximum(leave_cell - 1.0, leave_nucleus))
    mtoc = nucleus_centres + distance[:, None] * np.stack(
        [np.sin(golgi_angles), np.cos(golgi_angles)], axis=1
    )
    return golgi_angles, mtoc


FibreSeeds = tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]
"""(angle arrays, origin arrays, owning cell index arrays) of the fibres to grow, one entry per batch."""


def _interphase_fibre_seeds(
    rng: np.random.Generator, cells: tuple[CellGeometry, ...], mtoc: np.ndarray, scale: float
) -> FibreSeeds:
    """Interphase fibres: radiating from the MTOC, biased along the axis of elongated cells."""
    dividing = np.array([cell.dividing for cell in cells], dtype=bool)
    radii = np.array([cell.plan.radius for cell in cells])
    interphase = np.flatnonzero(~dividing)
    counts = np.clip(np.rint(1.1 * radii[interphase] / np.sqrt(scale)), 8, 70).astype(
        np.intp
    )  # fewer, not thinner, when small
    owner = np.repeat(interphase, counts)
    total = int(counts.sum())
    axis_angles = np.array([cell.plan.angle for cell in cells])[owner]
    elongations = np.array([cell.plan.parts[0].elongation for cell in cells])[owner]
    along_axis = rng.random(total) < np.minimum(0.75, 0.25 * (elongations - 1.0) + 0.1)
    axial = axis_angles + np.pi * (rng.random(total) < 0.5) + rng.normal(0.0, 0.35, total)
    angles = [np.where(along_axis, axial, rng.uniform(0, 2 * np.pi, total))]
    origins = [mtoc[owner] + rng.normal(0.0, 0.6 * scale, (total, 2))]
    return angles, origins, [owner]


def _dividing_structures(
    rng: np.random.Generator, cells: tuple[CellGeometry, ...], centrosomes: np.ndarray, seeds: FibreSeeds
) -> tuple[list[np.ndarray], list[int], dict[int, np.ndarray]]:
    """Dividing cells: astral fibres from both poles (appended to `seeds`; centrosomes set to the poles,
    in place), and (spindle lines, their cell indexes, telophase bridges by cell index)."""
    angles, origins, owners = seeds
    spindle_lines: list[np.ndarray] = []
    spindle_owner: list[int] = []
    bridges: dict[int, np.ndarray] = {}
    for index, cell in enumerate(cells):
        if not cell.dividing:
            continue
        plan = cell.plan
        poles = np.array(plan.poles, dtype=np.float64)
        centrosomes[index] = poles
        for side in (0, 1):
            outward = poles[side] - poles[1 - side]
            spread = 1.5 if plan.stage != "telophase" else np.pi
            count = int(rng.integers(9, 15))
            angles.append(np.arctan2(outward[0], outward[1]) + rng.uniform(-spread, spread, count))
            origins.append(np.repeat(poles[side][None], count, axis=0))
            owners.append(np.full(count, index))
        if plan.stage in ("metaphase", "anaphase"):
            axis = poles[0] - poles[1]
            across = np.array([axis[1], -axis[0]]) / (np.hypot(*axis) + 1e-9)
            half_width = 0.32 * plan.radius
            for offset in np.linspace(-1.0, 1.0, int(rng.integers(7, 11))):
                if plan.stage == "metaphase":  # pole -> kinetochores on the plate, from both sides
                    target = poles.mean(axis=0) + offset * half_width * across
                    spindle_lines += [_bowed_line(poles[0], target, 0.0), _bowed_line(poles[1], target, 0.0)]
                    spindle_owner += [index, index]
                else:  # interpolar fibres bowing outwards between the separating chromatin
                    spindle_lines.append(_bowed_line(poles[0], poles[1], offset * half_width * 0.9))
                    spindle_owner.append(index)
        elif plan.neck is not None:
            bridges[index] = np.array([plan.neck[0], plan.neck[1]], dtype=np.float64)
    return spindle_lines, spindle_owner, bridges
