"""Cell lines of the synthetic generator: the morphology table and the length scale.

A field of view holds cells of one "cell line" (HPA images show one line each). All lengths are given at
512 px (`REFERENCE_SIZE`) and scale with the image size (`length_scale`).
"""

from __future__ import annotations

from dataclasses import dataclass

REFERENCE_SIZE = 512
"""Image size at which all lengths in this package are specified; other sizes scale them."""


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


def length_scale(size: int) -> float:
    """Factor from lengths at 512 px to lengths at `size` px."""
    return size / REFERENCE_SIZE
