"""One cell's plan in the synthetic generator: its stage, body and nuclear shapes before rasterisation.

Interphase cells get an irregular body and one nucleus (rarely two). Dividing cells (metaphase, anaphase,
telophase) are rounded and carry condensed chromatin: a plate, two bars, or two daughter nuclei joined
by a cytokinetic bridge. Lengths are in image pixels; points are `(y, x)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np

from hpa_cells.synthetic.cell_lines import CellLine
from hpa_cells.synthetic.shapes import BlobShape, random_harmonics

Stage = Literal["interphase", "metaphase", "anaphase", "telophase"]
DIVIDING_STAGES: tuple[Stage, ...] = ("metaphase", "anaphase", "telophase")


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


def interphase_plan(
    rng: np.random.Generator, line: CellLine, centre: np.ndarray, radius: float, angle: float, scale: float
) -> CellPlan:
    elongation = rng.uniform(*line.elongation)
    body = BlobShape(
        centre_yx=(float(centre[0]), float(centre[1])),
        radius=float(radius),
        elongation=float(elongation),
        angle=float(angle),
        squareness=float(rng.uniform(*line.squareness)),
        harmonics=random_harmonics(rng, line.irregularity, 5),
    )
    nucleus_radius = radius * rng.uniform(*line.nucleus_ratio)
    offset = rng.normal(0.0, 0.07 * radius, 2)
    nucleus_angle = angle + rng.normal(0.0, 0.25)
    nucleus_elongation = float(min(rng.uniform(*line.nucleus_elongation), elongation * 1.1 + 0.2))
    nucleus_harmonics = random_harmonics(rng, 0.05, 2)
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


Chromatin = tuple[
    tuple[BlobShape, ...],
    tuple[BlobShape, ...],
    tuple[tuple[float, float], tuple[float, float]],
    tuple[tuple[float, float], tuple[float, float], float] | None,
]
"""(body parts, nuclei / chromatin shapes, spindle poles, telophase neck) of a dividing cell."""


def _metaphase(
    rng: np.random.Generator, centre: np.ndarray, radius: float, angle: float, min_half: float
) -> Chromatin:
    """A rounded cell with a chromatin plate across the spindle axis."""
    centre_t = (float(centre[0]), float(centre[1]))
    across = angle + np.pi / 2
    parts = (BlobShape(centre_t, 0.68 * radius, 1.08, angle, 2.0, random_harmonics(rng, 0.03, 3)),)
    plate_long, plate_half = 0.42 * radius, max(0.1 * radius, min_half)
    nuclei = (
        BlobShape(
            centre_t,
            float(np.sqrt(plate_long * plate_half)),
            plate_long / plate_half,
            across,
            2.0,
            random_harmonics(rng, 0.08, 3),
        ),
    )
    poles = (_point(centre, angle, 0.47 * radius), _point(centre, angle, -0.47 * radius))
    return parts, nuclei, poles, None


def _anaphase(
    rng: np.random.Generator, centre: np.ndarray, radius: float, angle: float, min_half: float
) -> Chromatin:
    """An elongated rounded cell with two separating chromatin bars."""
    centre_t = (float(centre[0]), float(centre[1]))
    across = angle + np.pi / 2
    parts = (BlobShape(centre_t, 0.72 * radius, 1.35, angle, 2.0, random_harmonics(rng, 0.03, 3)),)
    bar_long, bar_half = 0.34 * radius, max(0.09 * radius, min_half)
    separation = rng.uniform(0.22, 0.32) * radius
    nuclei = tuple(
        BlobShape(
            _point(centre, angle, sign * separation),
            float(np.sqrt(bar_long * bar_half)),
            bar_long / bar_half,
            across,
            2.0,
            random_harmonics(rng, 0.08, 3),
        )
        for sign in (-1.0, 1.0)
    )
    poles = (_point(centre, angle, 0.62 * radius), _point(centre, angle, -0.62 * radius))
    return parts, nuclei, poles, None


def _telophase(rng: np.random.Generator, centre: np.ndarray, radius: float, angle: float) -> Chromatin:
    """Two daughter cells with their nuclei, joined by a cytokinetic bridge (the neck)."""
    across = angle + np.pi / 2
    offset = 0.62 * radius
    parts = tuple(
        BlobShape(
            _point(centre, angle, sign * offset),
            0.42 * radius,
            1.05,
            across,
            2.0,
            random_harmonics(rng, 0.04, 3),
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
            random_harmonics(rng, 0.05, 2),
        )
        for sign in (-1.0, 1.0)
    )
    poles = (parts[0].centre_yx, parts[1].centre_yx)
    neck = (
        _point(centre, angle, 0.42 * radius),
        _point(centre, angle, -0.42 * radius),
        max(0.055 * radius, 1.1),
    )
    return parts, nuclei, poles, neck


def dividing_plan(
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
    min_half = max(1.2, 1.6 * scale)
    if stage == "metaphase":
        parts, nuclei, poles, neck = _metaphase(rng, centre, radius, angle, min_half)
    elif stage == "anaphase":
        parts, nuclei, poles, neck = _anaphase(rng, centre, radius, angle, min_half)
    elif stage == "telophase":
        parts, nuclei, poles, neck = _telophase(rng, centre, radius, angle)
    else:
        raise ValueError(f"not a dividing stage: {stage!r}")
    return CellPlan(
        line=line.name,
        centre_yx=(float(centre[0]), float(centre[1])),
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
