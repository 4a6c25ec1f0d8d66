"""Planning one synthetic field: seeds grown as colonies, cell shapes, and which cells divide.

Cells are seeded with a minimum spacing inside the parts of the field a smooth random "density" map
allows (so there are islands of touching cells and empty background); seeds outside the frame give
partial cells at the borders. Dividing cells sit on interior seeds with room cleared around them.
Lengths are in image pixels; points are `(y, x)`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from hpa_cells.synthetic.cell_lines import CellLine, length_scale
from hpa_cells.synthetic.cell_plans import DIVIDING_STAGES, CellPlan, Stage, dividing_plan, interphase_plan
from hpa_cells.synthetic.drawing import smooth_noise
from hpa_cells.synthetic.field_layout import LayoutError

DIVIDING_EXTENT: Mapping[str, float] = MappingProxyType(
    {"metaphase": 0.75, "anaphase": 0.9, "telophase": 1.06}
)
"""How far (in cell radii) a dividing cell reaches; neighbours whose nuclei would overlap it are removed."""


@dataclass(frozen=True)
class _SeedFrame:
    """Where seeds may go and how spacing is measured (stretched along the common orientation)."""

    size: int
    margin: float
    allowed_map: np.ndarray  # `32,32` bool: parts of the field open to seeding
    stretch: float
    cos_b: float
    sin_b: float

    def to_metric(self, points: np.ndarray) -> np.ndarray:
        along = points[:, 1] * self.cos_b + points[:, 0] * self.sin_b
        across = points[:, 0] * self.cos_b - points[:, 1] * self.sin_b
        return np.stack([along / self.stretch, across * self.stretch], axis=1)

    def allowed(self, points: np.ndarray) -> np.ndarray:
        inside = np.all((points >= -self.margin) & (points <= self.size + self.margin), axis=1)
        grid = np.clip((points / self.size * 31).round().astype(np.intp), 0, 31)
        return inside & self.allowed_map[grid[:, 0], grid[:, 1]]


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
    frame = _SeedFrame(size, margin, allowed_map, stretch, np.cos(base_angle), np.sin(base_angle))
    centres, radii = _grow_colonies(rng, line, frame, radius, n_target)
    if line.aligned:
        angles = base_angle + rng.normal(0.0, 0.15, len(centres))
    else:
        angles = rng.uniform(0, np.pi, len(centres))
    return centres, radii, angles


def _grow_colonies(
    rng: np.random.Generator, line: CellLine, frame: _SeedFrame, radius: float, n_target: int
) -> tuple[np.ndarray, np.ndarray]:
    """(`N,2` centres, `N,` radii): founders first, then cells budding off random existing cells."""
    centres = np.zeros((0, 2))
    metric = np.zeros((0, 2))
    radii = np.zeros(0)
    n_founders = int(rng.integers(3, 8))
    batch = 24
    rounds = 0
    while len(centres) < n_target and rounds < 6 * n_target:
        rounds += 1
        new_radii = radius * np.exp(rng.normal(0.0, line.radius_spread, batch))
        fresh = rng.uniform(-frame.margin, frame.size + frame.margin, size=(batch, 2))
        if len(centres) < n_founders:
            candidates = fresh
        else:
            candidates = _buds(rng, line, frame, centres, radii, new_radii, fresh)
        valid = frame.allowed(candidates)
        candidate_metric = frame.to_metric(candidates)
        if len(centres):
            gaps = np.hypot(
                candidate_metric[:, None, 0] - metric[None, :, 0],
                candidate_metric[:, None, 1] - metric[None, :, 1],
            )
            valid &= np.all(gaps >= line.spacing * (radii[None, :] + new_radii[:, None]) / 2, axis=1)
        taken = _spaced_subset(valid, candidate_metric, new_radii, line.spacing, n_target - len(centres))
        if taken:
            centres = np.concatenate([centres, candidates[taken]])
            metric = np.concatenate([metric, candidate_metric[taken]])
            radii = np.append(radii, new_radii[taken])
    return centres, radii


def _buds(
    rng: np.random.Generator,
    line: CellLine,
    frame: _SeedFrame,
    centres: np.ndarray,
    radii: np.ndarray,
    new_radii: np.ndarray,
    fresh: np.ndarray,
) -> np.ndarray:
    """Candidate seeds next to random existing cells at about the spacing (a few stay `fresh` draws)."""
    batch = len(new_radii)
    stretch, cos_b, sin_b = frame.stretch, frame.cos_b, frame.sin_b
    parents = rng.integers(0, len(centres), batch)
    direction = rng.uniform(0, 2 * np.pi, batch)
    gap = line.spacing * (radii[parents] + new_radii) / 2 * rng.uniform(1.0, 1.12, batch)
    along, across = gap * np.cos(direction) * stretch, gap * np.sin(direction) / stretch
    offsets = np.stack([along * sin_b + across * cos_b, along * cos_b - across * sin_b], axis=1)
    return np.where((rng.random(batch) < 0.04)[:, None], fresh, centres[parents] + offsets)


def _spaced_subset(
    valid: np.ndarray, candidate_metric: np.ndarray, new_radii: np.ndarray, spacing: float, room: int
) -> list[int]:
    """Greedily the valid candidates (in order, at most `room`) that keep the spacing among themselves."""
    taken: list[int] = []
    for hit in np.flatnonzero(valid):
        if len(taken) >= room:
            break
        if taken:
            others = np.asarray(taken)
            gaps = np.hypot(*(candidate_metric[others] - candidate_metric[hit]).T)
            if np.any(gaps < spacing * (new_radii[others] + new_radii[hit]) / 2):
                continue
        taken.append(int(hit))
    return taken


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
            plans.append(dividing_plan(rng, line, centres[index], float(radii[index]), stage, labels, scale))
        else:
            plans.append(
                interphase_plan(rng, line, centres[index], float(radii[index]), float(angles[index]), scale)
            )
    return plans
