"""Field layout of the synthetic generator: cell lines, cell and nucleus shapes, instance masks.

A field of view holds cells of one "cell line" (HPA images show one line each). Cells are seeded with a
minimum spacing inside the parts of the field a smooth random "density" map allows (so there are
islands of touching cells and empty background), each seed gets an irregular super-ellipse shape, and
pixels go to the cell whose shape is nearest in normalised distance, which gives touching cells with
smooth shared borders and ruffled free edges. Seeds outside the frame give partial cells at the borders.

Dividing cells (metaphase, anaphase, telophase) are rounded, sit on top of their neighbours and
carry condensed chromatin (a plate, two bars, or two daughter nuclei joined by a cytokinetic bridge).
All lengths are given at 512 px and scale with the image size. Arrays are `H,W`; points are `(y, x)`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from types import MappingProxyType
from typing import Literal

import cv2
import numpy as np
from scipy import ndimage

from hpa_cells.synthetic.drawing import smooth_noise

logger = logging.getLogger(__name__)

REFERENCE_SIZE = 512
"""Image size at which all lengths in this package are specified; other sizes scale them."""

Stage = Literal["interphase", "metaphase", "anaphase", "telophase"]
DIVIDING_STAGES: tuple[Stage, ...] = ("metaphase", "anaphase", "telophase")

ANGLE_BINS = 256
"""Angular resolution of the shape profiles looked up in `BlobShape.distance` (256: one uint8 index)."""

MAX_HARMONIC_ORDER = 8

# Read-only angle tables for the shape profiles (constants, computed once at import).
_PHI = np.arange(ANGLE_BINS) * (2 * np.pi / ANGLE_BINS)
_LOG_ABS_COS = np.log(np.maximum(np.abs(np.cos(_PHI)), 1e-12)).astype(np.float32)
_LOG_ABS_SIN = np.log(np.maximum(np.abs(np.sin(_PHI)), 1e-12)).astype(np.float32)
_COS_ORDERS = np.cos(np.arange(2, MAX_HARMONIC_ORDER + 1)[:, None] * _PHI[None, :]).astype(np.float32)
_SIN_ORDERS = np.sin(np.arange(2, MAX_HARMONIC_ORDER + 1)[:, None] * _PHI[None, :]).astype(np.float32)
for _table in (_PHI, _LOG_ABS_COS, _LOG_ABS_SIN, _COS_ORDERS, _SIN_ORDERS):
    _table.setflags(write=False)

DIVIDING_PRIORITY = 0.55
"""Normalised distances of dividing cells are scaled by this, so a rounded mitotic cell wins overlaps."""

DIVIDING_EXTENT: Mapping[str, float] = MappingProxyType(
    {"metaphase": 0.75, "anaphase": 0.9, "telophase": 1.06}
)
"""How far (in cell radii) a dividing cell reaches; neighbours whose nuclei would overlap it are removed."""

MAX_CELLS = 254
"""Most cells one field may plan (owner maps are uint8)."""


class LayoutError(RuntimeError):
    """A field layout cannot satisfy its constraints (e.g. too few interior cells for the dividing cells asked)."""


@dataclass(frozen=True)
class CellLine:
    """Morphology of one synthetic cell line; lengths in px at 512 px image size."""

    name: str
    radius: float  # typical cell radius
    radius_spread: float  # standard deviation of log radius between cells
    elongation: tuple[float, float]  # range of long/short axis ratio
    aligned: bool  # cells share one orientation (spindle-cell streams)
    squareness: tuple[float, float]  # super-ellipse exponent range: < 2 tapered/pointed, 2 ellipse, > 2 boxy
    irregularity: float  # amplitude of the low-order radial harmonics (lobes, lamellipodia)
    ruffle: float  # amplitude of fine boundary noise (ruffled free edges)
    nucleus_ratio: tuple[float, float]  # nucleus radius / cell radius
    nucleus_elongation: tuple[float, float]
    spacing: float  # minimum seed distance / mean radius of the two cells
    cell_count: tuple[int, int]  # range of seeds per field (partial border cells included)
    coverage: tuple[float, float]  # fraction of the field open to seeding; the rest stays background


CELL_LINES: tuple[CellLine, ...] = (
    CellLine(
        name="compact_epithelial",
        radius=29.0,
        radius_spread=0.12,
        elongation=(1.0, 1.35),
        aligned=False,
        squareness=(2.0, 2.6),
        irregularity=0.07,
        ruffle=0.05,
        nucleus_ratio=(0.46, 0.56),
        nucleus_elongation=(1.05, 1.35),
        spacing=1.5,
        cell_count=(24, 40),
        coverage=(0.55, 0.95),
    ),
    CellLine(
        name="large_flat",
        radius=44.0,
        radius_spread=0.15,
        elongation=(1.05, 1.6),
        aligned=False,
        squareness=(1.7, 2.2),
        irregularity=0.17,
        ruffle=0.06,
        nucleus_ratio=(0.30, 0.38),
        nucleus_elongation=(1.05, 1.4),
        spacing=1.45,
        cell_count=(12, 22),
        coverage=(0.7, 1.0),
    ),
    CellLine(
        name="spindle",
        radius=31.0,
        radius_spread=0.12,
        elongation=(2.2, 3.2),
        aligned=True,
        squareness=(1.25, 1.6),
        irregularity=0.08,
        ruffle=0.06,
        nucleus_ratio=(0.36, 0.44),
        nucleus_elongation=(1.5, 2.1),
        spacing=1.3,
        cell_count=(18, 32),
        coverage=(0.6, 0.95),
    ),
    CellLine(
        name="small_round",
        radius=22.5,
        radius_spread=0.1,
        elongation=(1.0, 1.2),
        aligned=False,
        squareness=(1.9, 2.3),
        irregularity=0.05,
        ruffle=0.04,
        nucleus_ratio=(0.55, 0.66),
        nucleus_elongation=(1.0, 1.25),
        spacing=1.6,
        cell_count=(28, 46),
        coverage=(0.5, 0.9),
    ),
)

CELL_LINE_NAMES: tuple[str, ...] = tuple(line.name for line in CELL_LINES)


def cell_line_by_name(name: str) -> CellLine:
    """The cell line called `name`; raises KeyError listing the known names."""
    for line in CELL_LINES:
        if line.name == name:
            return line
    raise KeyError(f"unknown cell line {name!r}; known: {', '.join(CELL_LINE_NAMES)}")


@dataclass(frozen=True)
class BlobShape:
    """An irregular super-ellipse: centre, radius (geometric mean of the semi-axes), axis ratio, angle,
    exponent, and radial harmonics (complex amplitude per order 2, 3, ...)."""

    centre_yx: tuple[float, float]
    radius: float
    elongation: float = 1.0
    angle: float = 0.0
    squareness: float = 2.0
    harmonics: tuple[complex, ...] = ()

    def semi_axes(self) -> tuple[float, float]:
        """(along `angle`, across) semi-axis lengths."""
        root = math.sqrt(self.elongation)
        return self.radius * root, self.radius / root

    @cached_property
    def reach(self) -> float:
        """A radius that surely encloses the shape."""
        return (
            self.radius * float(np.sqrt(self.elongation)) * (1.0 + sum(abs(h) for h in self.harmonics)) + 1.0
        )

    @cached_property
    def _profile(self) -> np.ndarray:
        """`ANGLE_BINS,` float32: normalised distance per unit ellipse radius, by angle in the ellipse frame."""
        if abs(self.squareness - 2.0) < 1e-6:
            profile = np.ones(ANGLE_BINS, dtype=np.float32)
        else:
            p = np.float32(self.squareness)
            profile = np.exp(np.log(np.exp(p * _LOG_ABS_COS) + np.exp(p * _LOG_ABS_SIN)) / p)
        if self.harmonics:
            count = len(self.harmonics)
            if count > MAX_HARMONIC_ORDER - 1:
                raise ValueError(f"at most {MAX_HARMONIC_ORDER - 1} harmonics are supported, got {count}")
            amplitudes = np.asarray(self.harmonics, dtype=np.complex64)
            rho = np.float32(1.0) + (
                amplitudes.real[:, None] * _COS_ORDERS[:count]
                - amplitudes.imag[:, None] * _SIN_ORDERS[:count]
            ).sum(axis=0)
            profile = profile / np.maximum(rho, np.float32(0.3))
        return profile.astype(np.float32)

    def distance(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """Normalised distance (< 1 inside) on the grid `ys` (`h,1`) x `xs` (`1,w`), float32.

        The radius in the frame where the shape's ellipse is a unit circle, times an angular profile
        (super-ellipse exponent and harmonics) looked up in a 256-entry table with `cv2.LUT`.
        """
        along, across = self.semi_axes()
        cos_a, sin_a = math.cos(self.angle), math.sin(self.angle)
        dy = ys.ravel() - self.centre_yx[0]  # Python floats keep float32 arrays float32
        dx = xs.ravel() - self.centre_yx[1]
        u = np.add.outer(dy * (sin_a / along), dx * (cos_a / along))
        v = np.add.outer(dy * (cos_a / across), dx * (-sin_a / across))
        radius, angle = cv2.cartToPolar(u, v)
        if self.squareness == 2.0 and not self.harmonics:
            return radius
        angle *= ANGLE_BINS / (2 * math.pi)
        index = np.minimum(angle, ANGLE_BINS - 1.0).astype(np.uint8)
        radius *= cv2.LUT(index, self._profile)
        return radius


@dataclass(frozen=True)
class CellPlan:
    """Everything drawn for one cell before rasterisation, in image coordinates.

    `parts` is the cell body (one shape; two daughters for telophase); `neck` the telophase bridge
    as (end, end, half width); `nuclei` the nuclear / chromatin shapes; `poles` the spindle poles of a
    dividing cell; `mitotic_labels` the dividing-cell classes (15, 16, 17) it was created to carry.
    """

    line: str
    centre_yx: tuple[float, float]
    radius: float
    angle: float
    stage: Stage
    parts: tuple[BlobShape, ...]
    nuclei: tuple[BlobShape, ...]
    ruffle: float
    neck: tuple[tuple[float, float], tuple[float, float], float] | None = None
    poles: tuple[tuple[float, float], tuple[float, float]] | None = None
    mitotic_labels: tuple[int, ...] = ()

    @property
    def dividing(self) -> bool:
        return self.stage != "interphase"

    @cached_property
    def reach(self) -> float:
        """Distance from the centre that surely encloses the cell."""
        cy, cx = self.centre_yx
        return (
            max(float(np.hypot(p.centre_yx[0] - cy, p.centre_yx[1] - cx)) + p.reach for p in self.parts) + 2.0
        )

    def distance(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """Normalised distance to the cell body (< 1 inside) on a grid, float32."""
        distance = self.parts[0].distance(ys, xs)
        for part in self.parts[1:]:
            distance = np.minimum(distance, part.distance(ys, xs))
        if self.neck is not None:
            (y0, x0), (y1, x1), half_width = self.neck
            length = float(np.hypot(y1 - y0, x1 - x0))
            ty, tx = (y1 - y0) / length, (x1 - x0) / length
            my, mx = (y0 + y1) / 2, (x0 + x1) / 2
            along = np.abs((ys - np.float32(my)) * np.float32(ty) + (xs - np.float32(mx)) * np.float32(tx))
            across = np.abs((xs - np.float32(mx)) * np.float32(ty) - (ys - np.float32(my)) * np.float32(tx))
            neck = np.maximum(along / np.float32(length / 2), across / np.float32(half_width))
            distance = np.minimum(distance, neck)
        return distance


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


def length_scale(size: int) -> float:
    """Factor from lengths at 512 px to lengths at `size` px."""
    return size / REFERENCE_SIZE


# --------------------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------------------


def _harmonics(rng: np.random.Generator, amplitude: float, orders: int) -> tuple[complex, ...]:
    """Random radial harmonics for orders 2..orders+1, amplitude decaying with the order."""
    magnitudes = amplitude * rng.uniform(0.3, 1.0, orders) / np.arange(1, orders + 1) ** 0.6
    phases = rng.uniform(0, 2 * np.pi, orders)
    return tuple(complex(m * np.cos(p), m * np.sin(p)) for m, p in zip(magnitudes, phases, strict=True))


def _seed_positions(
    rng: np.random.Generator, size: int, line: CellLine, scale: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeds grown as colonies: (`N,2` centres, `N,` radii, `N,` angles).

    A few founders are dropped where a smooth random density map allows; then new cells bud off
    random existing cells at about the minimum spacing, so cells touch inside colonies and the field
    keeps empty background between them. Spacing is measured in a frame stretched along the common
    orientation for aligned (spindle) lines.
    """
    radius = line.radius * scale
    n_target = int(rng.integers(line.cell_count[0], line.cell_count[1] + 1))
    coverage = rng.uniform(*line.coverage)
    density = smooth_noise(rng, (32, 32), 8.0)
    allowed_map = density >= np.quantile(density, 1.0 - coverage)
    margin = 0.6 * radius
    base_angle = rng.uniform(0, np.pi)
    stretch = float(np.sqrt(np.mean(line.elongation))) if line.aligned else 1.0
    cos_b, sin_b = np.cos(base_angle), np.sin(base_angle)

    def to_metric(points: np.ndarray) -> np.ndarray:
        along = points[:, 1] * cos_b + points[:, 0] * sin_b
        across = points[:, 0] * cos_b - points[:, 1] * sin_b
        return np.stack([along / stretch, across * stretch], axis=1)

    def allowed(points: np.ndarray) -> np.ndarray:
        inside = np.all((points >= -margin) & (points <= size + margin), axis=1)
        grid = np.clip((points / size * 31).round().astype(np.intp), 0, 31)
        return inside & allowed_map[grid[:, 0], grid[:, 1]]

    centres = np.zeros((0, 2))
    metric = np.zeros((0, 2))
    radii = np.zeros(0)
    n_founders = int(rng.integers(3, 8))
    batch = 24
    rounds = 0
    while len(centres) < n_target and rounds < 6 * n_target:
        rounds += 1
        new_radii = radius * np.exp(rng.normal(0.0, line.radius_spread, batch))
        fresh = rng.uniform(-margin, size + margin, size=(batch, 2))
        if len(centres) < n_founders:
            candidates = fresh
        else:
            parents = rng.integers(0, len(centres), batch)
            direction = rng.uniform(0, 2 * np.pi, batch)
            gap = line.spacing * (radii[parents] + new_radii) / 2 * rng.uniform(1.0, 1.12, batch)
            along, across = gap * np.cos(direction) * stretch, gap * np.sin(direction) / stretch
            offsets = np.stack([along * sin_b + across * cos_b, along * cos_b - across * sin_b], axis=1)
            candidates = np.where((rng.random(batch) < 0.04)[:, None], fresh, centres[parents] + offsets)
        valid = allowed(candidates)
        candidate_metric = to_metric(candidates)
        if len(centres):
            gaps = np.hypot(
                candidate_metric[:, None, 0] - metric[None, :, 0],
                candidate_metric[:, None, 1] - metric[None, :, 1],
            )
            valid &= np.all(gaps >= line.spacing * (radii[None, :] + new_radii[:, None]) / 2, axis=1)
        taken: list[int] = []
        for hit in np.flatnonzero(valid):
            if len(centres) + len(taken) >= n_target:
                break
            if taken:
                others = np.asarray(taken)
                gaps = np.hypot(*(candidate_metric[others] - candidate_metric[hit]).T)
                if np.any(gaps < line.spacing * (new_radii[others] + new_radii[hit]) / 2):
                    continue
            taken.append(int(hit))
        if taken:
            centres = np.concatenate([centres, candidates[taken]])
            metric = np.concatenate([metric, candidate_metric[taken]])
            radii = np.append(radii, new_radii[taken])
    if line.aligned:
        angles = base_angle + rng.normal(0.0, 0.15, len(centres))
    else:
        angles = rng.uniform(0, np.pi, len(centres))
    return centres, radii, angles


def _interphase_plan(
    rng: np.random.Generator, line: CellLine, centre: np.ndarray, radius: float, angle: float, scale: float
) -> CellPlan:
    elongation = rng.uniform(*line.elongation)
    body = BlobShape(
        centre_yx=(float(centre[0]), float(centre[1])),
        radius=float(radius),
        elongation=float(elongation),
        angle=float(angle),
        squareness=float(rng.uniform(*line.squareness)),
        harmonics=_harmonics(rng, line.irregularity, 5),
    )
    nucleus_radius = radius * rng.uniform(*line.nucleus_ratio)
    offset = rng.normal(0.0, 0.07 * radius, 2)
    nucleus_angle = angle + rng.normal(0.0, 0.25)
    nucleus_elongation = float(min(rng.uniform(*line.nucleus_elongation), elongation * 1.1 + 0.2))
    nucleus_harmonics = _harmonics(rng, 0.05, 2)
    if rng.random() < 0.03:  # binucleated cell: two smaller nuclei side by side along the cell axis
        small = nucleus_radius * 0.74
        step = small * 1.08 * np.array([np.sin(nucleus_angle), np.cos(nucleus_angle)])
        nuclei = tuple(
            BlobShape(
                centre_yx=(
                    float(centre[0] + offset[0] + sign * step[0]),
                    float(centre[1] + offset[1] + sign * step[1]),
                ),
                radius=float(small),
                elongation=float(max(1.0, nucleus_elongation * 0.8)),
                angle=float(nucleus_angle + np.pi / 2),
                harmonics=nucleus_harmonics,
            )
            for sign in (-1.0, 1.0)
        )
    else:
        nuclei = (
            BlobShape(
                centre_yx=(float(centre[0] + offset[0]), float(centre[1] + offset[1])),
                radius=float(nucleus_radius),
                elongation=nucleus_elongation,
                angle=float(nucleus_angle),
                harmonics=nucleus_harmonics,
            ),
        )
    return CellPlan(
        line=line.name,
        centre_yx=(float(centre[0]), float(centre[1])),
        radius=float(radius),
        angle=float(angle),
        stage="interphase",
        parts=(body,),
        nuclei=nuclei,
        ruffle=line.ruffle,
    )


def _point(centre: np.ndarray, angle: float, distance: float) -> tuple[float, float]:
    """The point `distance` from `centre` (y, x) along `angle` (radians from the x axis)."""
    return float(centre[0] + distance * np.sin(angle)), float(centre[1] + distance * np.cos(angle))


def _dividing_plan(
    rng: np.random.Generator,
    line: CellLine,
    centre: np.ndarray,
    radius: float,
    stage: Stage,
    mitotic_labels: tuple[int, ...],
    scale: float,
) -> CellPlan:
    """A rounded mitotic cell: metaphase plate, anaphase chromatin bars, or telophase daughters + bridge."""
    radius = float(min(radius, line.radius * scale * 1.1))
    angle = float(rng.uniform(0, np.pi))
    across = angle + np.pi / 2
    min_half = max(1.2, 1.6 * scale)
    centre_t = (float(centre[0]), float(centre[1]))
    neck = None
    if stage == "metaphase":
        parts = (BlobShape(centre_t, 0.68 * radius, 1.08, angle, 2.0, _harmonics(rng, 0.03, 3)),)
        plate_long, plate_half = 0.42 * radius, max(0.1 * radius, min_half)
        nuclei = (
            BlobShape(
                centre_t,
                float(np.sqrt(plate_long * plate_half)),
                plate_long / plate_half,
                across,
                2.0,
                _harmonics(rng, 0.08, 3),
            ),
        )
        poles = (_point(centre, angle, 0.47 * radius), _point(centre, angle, -0.47 * radius))
    elif stage == "anaphase":
        parts = (BlobShape(centre_t, 0.72 * radius, 1.35, angle, 2.0, _harmonics(rng, 0.03, 3)),)
        bar_long, bar_half = 0.34 * radius, max(0.09 * radius, min_half)
        separation = rng.uniform(0.22, 0.32) * radius
        nuclei = tuple(
            BlobShape(
                _point(centre, angle, sign * separation),
                float(np.sqrt(bar_long * bar_half)),
                bar_long / bar_half,
                across,
                2.0,
                _harmonics(rng, 0.08, 3),
            )
            for sign in (-1.0, 1.0)
        )
        poles = (_point(centre, angle, 0.62 * radius), _point(centre, angle, -0.62 * radius))
    elif stage == "telophase":
        offset = 0.62 * radius
        parts = tuple(
            BlobShape(
                _point(centre, angle, sign * offset),
                0.42 * radius,
                1.05,
                across,
                2.0,
                _harmonics(rng, 0.04, 3),
            )
            for sign in (-1.0, 1.0)
        )
        nuclei = tuple(
            BlobShape(
                _point(centre, angle, sign * (offset + 0.04 * radius)),
                0.21 * radius,
                1.15,
                across,
                2.0,
                _harmonics(rng, 0.05, 2),
            )
            for sign in (-1.0, 1.0)
        )
        poles = (parts[0].centre_yx, parts[1].centre_yx)
        neck = (
            _point(centre, angle, 0.42 * radius),
            _point(centre, angle, -0.42 * radius),
            max(0.055 * radius, 1.1),
        )
    else:
        raise ValueError(f"not a dividing stage: {stage!r}")
    return CellPlan(
        line=line.name,
        centre_yx=centre_t,
        radius=radius,
        angle=angle,
        stage=stage,
        parts=parts,
        nuclei=nuclei,
        ruffle=0.0,
        neck=neck,
        poles=poles,
        mitotic_labels=tuple(sorted(mitotic_labels)),
    )


def plan_field(
    rng: np.random.Generator,
    size: int,
    line: CellLine,
    dividing: tuple[tuple[Stage, tuple[int, ...]], ...] = (),
    spontaneous_mitosis: float = 0.015,
) -> list[CellPlan]:
    """Draw the cells of one field: seeds, shapes, and which cells divide.

    `dividing` lists (stage, mitotic labels) for dividing cells that must exist (the carriers of
    classes 15-17); they are placed on seeds whose whole cell lies inside the frame. Other interior
    cells divide spontaneously with probability `spontaneous_mitosis` (unlabelled mitoses, as in real
    fields). Raises `LayoutError` when there are too few interior seeds.
    """
    scale = length_scale(size)
    centres, radii, angles = _seed_positions(rng, size, line, scale)
    interior = np.flatnonzero(
        (centres.min(axis=1) >= 1.15 * radii) & (centres.max(axis=1) <= size - 1.15 * radii)
    )
    n_spontaneous = int(rng.binomial(max(len(interior) - len(dividing), 0), spontaneous_mitosis))
    wanted = list(dividing) + [
        (DIVIDING_STAGES[int(rng.integers(0, len(DIVIDING_STAGES)))], ()) for _ in range(n_spontaneous)
    ]
    if len(interior) < len(wanted):
        raise LayoutError(
            f"{len(interior)} interior cells for {len(wanted)} dividing cells ({line.name}, size {size})"
        )
    chosen = rng.choice(interior, size=len(wanted), replace=False) if wanted else np.zeros(0, dtype=np.intp)
    stage_of = {int(index): want for index, want in zip(chosen, wanted, strict=True)}
    # Clear room around dividing cells: rounded mitotic cells stand apart, and neighbours' nuclei stay whole.
    keep = np.ones(len(centres), dtype=bool)
    for index, (stage, _) in stage_of.items():
        gaps = np.hypot(*(centres - centres[index]).T)
        crowding = gaps < DIVIDING_EXTENT[stage] * radii[index] + 0.62 * radii
        crowding[list(stage_of)] = False
        keep &= ~crowding
    plans: list[CellPlan] = []
    for index in np.flatnonzero(keep):
        if int(index) in stage_of:
            stage, labels = stage_of[int(index)]
            plans.append(_dividing_plan(rng, line, centres[index], float(radii[index]), stage, labels, scale))
        else:
            plans.append(
                _interphase_plan(rng, line, centres[index], float(radii[index]), float(angles[index]), scale)
            )
    return plans


# --------------------------------------------------------------------------------------------------
# Rasterisation
# --------------------------------------------------------------------------------------------------


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

    # Keep each cell's main part (the one holding its first nucleus centre, else the largest).
    min_area = max(8.0, 0.03 * np.pi * (line.radius * scale) ** 2)
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

    # Nuclei: each plan's nuclear shapes, kept on its own pixels and off the cell boundary.
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
    areas = _label_counts(owner)[: len(plans) + 1]
    nucleus_areas = _label_counts(nucleus_owner)[: len(plans) + 1]
    border_ids = np.unique(np.concatenate([owner[0], owner[-1], owner[:, 0], owner[:, -1]]))
    touches = np.zeros(len(plans) + 1, dtype=bool)
    touches[border_ids] = True
    keep = (areas >= min_area) & ((nucleus_areas > 0) | touches)
    keep[0] = False
    dropped = np.flatnonzero((areas > 0) & ~keep)
    dropped = dropped[dropped > 0]
    if dropped.size:
        logger.debug("dropping %d cells (slivers or nucleus lost inside the frame)", dropped.size)
    renumber = np.zeros(256, dtype=np.uint8)
    kept = np.flatnonzero(keep)
    renumber[kept] = np.arange(1, kept.size + 1)
    if kept.size == 0:
        raise LayoutError(
            f"no cell survived rasterisation of a {size} px field with {len(plans)} planned cells"
        )
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

    pad = max(4, int(round(0.3 * line.radius * scale)))
    cells: list[CellGeometry] = []
    for cell_id, plan_index in enumerate(kept, start=1):
        box = boxes[plan_index - 1]  # removals since only shrank cells, so the box still encloses it
        plan = plans[plan_index - 1]
        y0, y1 = max(box[0].start - pad, 0), min(box[0].stop + pad, size)
        x0, x1 = max(box[1].start - pad, 0), min(box[1].stop + pad, size)
        rows, cols = slice(y0, y1), slice(x0, x1)
        mask = cell_mask[rows, cols] == cell_id
        nucleus = nucleus_mask[rows, cols] == cell_id
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
        cells.append(
            CellGeometry(
                cell_id=cell_id,
                plan=plan,
                origin_yx=(y0, x0),
                mask=mask,
                nucleus=nucleus,
                contact=contact[rows, cols] & mask,
                edge_distance=edge_distance[rows, cols],
                nucleus_distance=nucleus_distance[rows, cols],
                nucleus_depth=nucleus_depth[rows, cols],
                area=int(mask.sum()),
                nucleus_area=nucleus_area,
                n_nuclei=n_nuclei,
                touches_border=bool(touches[plan_index]),
                nucleus_complete=nucleus_complete,
            )
        )
    return FieldLayout(
        size=size,
        line=line,
        cells=tuple(cells),
        cell_mask=cell_mask,
        nucleus_mask=nucleus_mask,
        edge_distance=edge_distance,
        nucleus_distance=nucleus_distance,
        nucleus_depth=nucleus_depth,
        contact=contact,
    )
