"""The 28 green (protein) pattern generators, one per 2018 localization class.

Each generator draws the raw spatial pattern of one class in one cell's crop, placed relative to that
cell's own nucleus, cytoplasm, membrane and landmarks (`CellAnatomy`), and returns an `h,w` float32
map (>= 0, zero outside the cell) in arbitrary units. `normalise_pattern` then rescales it so that
the integrated intensity does not identify the class: the cell mean becomes `coverage ** 0.5`, where
coverage is the fraction of the cell the pattern effectively occupies. Sparse patterns are thus
brighter per pixel than diffuse ones (as in real images, where exposure is set on the brightest
structures) but their totals overlap with diffuse classes once per-cell expression levels vary.

Classes 15-17 (microtubule ends, cytokinetic bridge, mitotic spindle) are drawn in dividing cells;
`REQUIRED_STAGES` says which mitotic stages can show them. All lengths scale with the image size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from types import MappingProxyType

import cv2
import numpy as np

from hpa_cells.classes import NUM_CLASSES
from hpa_cells.synthetic.anatomy import CellAnatomy
from hpa_cells.synthetic.cell_plans import DIVIDING_STAGES, Stage
from hpa_cells.synthetic.drawing import (
    PolylineSet,
    blur,
    draw_polylines,
    draw_rings,
    gaussian_spots,
    sample_points_in_mask,
    smooth_noise,
)

PatternGenerator = Callable[[CellAnatomy, np.random.Generator], np.ndarray]

COVERAGE_EXPONENT = 0.5
"""A pattern's cell mean after `normalise_pattern` is coverage ** this (0 = equal totals, 1 = equal peaks)."""

DIVIDING_CLASSES: tuple[int, ...] = (15, 16, 17)

REQUIRED_STAGES: Mapping[int, tuple[Stage, ...]] = MappingProxyType(
    {15: DIVIDING_STAGES, 16: ("telophase",), 17: ("metaphase", "anaphase")}
)
"""Mitotic stages a carrier of each dividing-cell class must be in; other classes need interphase cells."""


class PatternError(RuntimeError):
    """A pattern could not be drawn in a cell (e.g. a mitotic class in a cell at the wrong stage)."""


# --------------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------------


def _px(anatomy: CellAnatomy, length: float, minimum: float = 0.5) -> float:
    """A length given at 512 px, in px at this image size (never below `minimum`)."""
    return max(length * anatomy.scale, minimum)


def _texture(anatomy: CellAnatomy, rng: np.random.Generator, length: float, amount: float) -> np.ndarray:
    """A positive multiplicative texture `1 + amount * noise`, clipped at 0.1."""
    noise = smooth_noise(rng, anatomy.geometry.shape, _px(anatomy, length, 0.8))
    return np.maximum(np.float32(1.0) + np.float32(amount) * noise, np.float32(0.1))


def _nucleoplasm_fill(anatomy: CellAnatomy) -> np.ndarray:
    """Soft-edged fill of the nucleus (no texture)."""
    geometry = anatomy.geometry
    edge = np.minimum(geometry.nucleus_depth / np.float32(_px(anatomy, 1.2, 0.7)), np.float32(1.0))
    return (np.float32(0.4) + np.float32(0.6) * edge) * geometry.nucleus


def _cytoplasm_fill(anatomy: CellAnatomy) -> np.ndarray:
    """Soft-edged fill of the cytoplasm, thinning towards the cell edge (a flat cell is thinner there)."""
    geometry = anatomy.geometry
    edge = np.minimum(geometry.edge_distance / np.float32(_px(anatomy, 5.0, 1.0)), np.float32(1.0))
    return (np.float32(0.45) + np.float32(0.55) * edge) * geometry.cytoplasm


def _perinuclear_weight(anatomy: CellAnatomy, decay_radii: float, floor: float) -> np.ndarray:
    """Cytoplasmic weight decaying with distance from the nucleus (decay in cell radii) plus a floor."""
    geometry = anatomy.geometry
    decay = np.float32(max(decay_radii * anatomy.radius, 1.0))
    return (np.exp(-geometry.nucleus_distance / decay) + np.float32(floor)) * geometry.cytoplasm


def _cytoplasm_spots(
    anatomy: CellAnatomy,
    rng: np.random.Generator,
    count: int,
    sigma: float,
    weights: np.ndarray | None = None,
    brightness: tuple[float, float] = (0.5, 1.0),
) -> np.ndarray:
    """`count` Gaussian puncta of width `sigma` (px at 512) in the cytoplasm, positions drawn from `weights`."""
    geometry = anatomy.geometry
    region = geometry.cytoplasm & (geometry.edge_distance > 1.0)
    if not region.any():
        region = geometry.cytoplasm
    centres = sample_points_in_mask(rng, region, count, weights)
    return gaussian_spots(
        geometry.shape, centres, _px(anatomy, sigma, 0.45), rng.uniform(*brightness, len(centres))
    )


def _nuclear_spots(
    anatomy: CellAnatomy,
    rng: np.random.Generator,
    count: int,
    sigma: float,
    avoid_nucleoli: bool = True,
    brightness: tuple[float, float] = (0.6, 1.0),
) -> tuple[np.ndarray, np.ndarray]:
    """`count` puncta inside the nucleus (away from its edge, optionally not on nucleoli): (image, centres)."""
    geometry = anatomy.geometry
    region = geometry.nucleus & (geometry.nucleus_depth > _px(anatomy, sigma, 0.5) + 0.5)
    if not region.any():
        region = geometry.nucleus
    weights = (np.float32(1.0) - np.float32(0.95) * anatomy.nucleoli_map) if avoid_nucleoli else None
    centres = sample_points_in_mask(rng, region, count, weights)
    image = gaussian_spots(
        geometry.shape, centres, _px(anatomy, sigma, 0.45), rng.uniform(*brightness, len(centres))
    )
    return image, centres


def _band(distance: np.ndarray, width: float) -> np.ndarray:
    """Gaussian band of the given width around distance 0 (a line along the pixels where `distance` is 0)."""
    return np.exp(-(distance * distance) * np.float32(1.0 / (2.0 * width * width)))


def _alignment(anatomy: CellAnatomy, origin: np.ndarray, angle: float) -> np.ndarray:
    """`h,w` cosine of the angle between each pixel's direction from `origin` and the direction `angle`."""
    height, width = anatomy.geometry.shape
    dy = np.arange(height, dtype=np.float32) - np.float32(origin[0])
    dx = np.arange(width, dtype=np.float32) - np.float32(origin[1])
    along = np.add.outer(dy * math.sin(angle), dx * math.cos(angle))
    distance = np.sqrt(np.add.outer(dy * dy, dx * dx))
    return along / np.maximum(distance, np.float32(1e-3))


def _require_stage(anatomy: CellAnatomy, class_id: int) -> None:
    stage = anatomy.geometry.stage
    if stage not in REQUIRED_STAGES[class_id]:
        raise PatternError(
            f"class {class_id} needs a cell in {'/'.join(REQUIRED_STAGES[class_id])}, "
            f"but cell {anatomy.geometry.cell_id} is in {stage}"
        )


# --------------------------------------------------------------------------------------------------
# Nuclear classes
# --------------------------------------------------------------------------------------------------


def nucleoplasm(anatomy: CellAnatomy, rng: np.random.Generator) -> np.ndarray:
    """0 Nucleoplasm: the whole nucleus filled with a finely mottled signal, sparing the nucleoli."""
    fill = _nucleoplasm_fill(anatomy) * _texture(anatomy, rng, 1.5, 0.25)
    return fill * (np.float32(1.0) - np.float32(0.85) * anatomy.nucleoli_map)


def nuclear_membrane(anatomy: CellAnatomy, rng: np.random.Generator) -> np.ndarray:
    """1 Nuclear membrane: a thin, continuous ring on the nuclear envelope (both sides of the nucleus edge)."""
    geometry = anatomy.geometry
    width = _px(anatomy, 0.9, 0.6)
    inside = _band(geometry.nucleus_depth, width) * geometry.nucleus
    outside = np.exp(-(geometry.nucleus_distance**2) / np.float32(2.0 * width * width)) * geometry.cytoplasm
    ring = np.maximum(inside, outside * np.float32(0.8))
    return ring * _texture(anatomy, rng, 2.0, 0.2) + np.float32(0.02) * geometry.nucleus


def nucleoli(anatomy: CellAnatomy, rng: np.random.Generator) -> np.ndarray:
    """2 Nucleoli: the 2-4 nucleolar blobs of each nucleus (the dark holes of the blue channel), filled."""
    return anatomy.nucleoli_map * _texture(anatomy, rng, 1.0, 0.15) + np.float32(0.02) * _nucleoplasm_fill(
        anatomy
    )


def nucleoli_fibrillar_center(anatomy: CellAnatomy, rng: np.random.Generator) -> np.ndarray:
    """3 Nucleoli fibrillar center: 1-3 tiny sharp dots inside each nucleolus, over a faint nucleolar rim."""
    geometry = anatomy.geometry
    centres = []
    for y, x, radius in anatomy.nucleoli:
        count = int(rng.integers(1, 4))
        centres.append(np.array([y, x]) + rng.normal(0.0, 0.35 * radius, (count, 2)))
    points = np.concatenate(centres) if centres else np.zeros((0, 2))
    dots = gaussian_spots(
        geometry.shape, points, _px(anatomy, 0.55, 0.45), rng.uniform(0.7, 1.0, len(points))
    )
    return dots * geometry.nucleus + np.float32(0.08) * anatomy.nucleoli_map


def nuclear_speckles(anatomy: CellAnatomy, rng: np.random.Generator) -> np.ndarray:
    """4 Nuclear speckles: 10-30 irregular small blobs (clusters of 2-3 puncta) in the nucleoplasm, off the nucleoli."""
    geometry = anatomy.geometry
    count = int(rng.integers(10, 31))
    _, centres = _nuclear_spots(anatomy, rng, count, 0.9)
    lobes = np.concatenate(
        [
            centres,
            centres + rng.normal(0.0, _px(anatomy, 1.1), centres.shape),
            centres + rng.normal(0.0, _px(anatomy, 1.1), centres.shape),
        ]
    )
    blobs = gaussian_spots(geometry.shape, lobes, _px(anatomy, 0.85, 0.45), rng.uniform(0.4, 1.0, len(lobes)))
    return blobs * geometry.nucleus * (np.float32(1.0) - np.float32(0.9) * anatomy.nucleoli_map) + np.float32(
        0.1
    ) * _nucleoplasm_fill(anatomy)


def nuclear_bodies(anatomy: CellAnatomy, rng: np.random.Generator) -> np.ndarray:
    """5 Nuclear bodies: 2-6 distinct, round, well separated dots in the nucleus over almost no background."""
    spots, _ = _nuclear_spots(anatomy, rng, int(rng.integers(2, 7)), 1.0, brightness=(0.7, 1.0))
    return spots * anatomy.geometry.nucleus + np.float32(0.015) * _nucleoplasm_fill(anatomy)


# --------------------------------------------------------------------------------------------------
# Secretory pathway and vesicles
# --------------------------------------------------------------------------------------------------


def endoplasmic_reticulum(anatomy: CellAnatomy, rng: np.random.Generator) -> np.ndarray:
    """6 Endoplasmic reticulum: the reticular network of the yellow channel, densest around the nucleus,
    including the nuclear envelope."""
    geometry = anatomy.geometry
    decay = np.float32(0.4 * anatomy.radius)
    density = np.float32(0.2) + np.float32(0.8) * np.exp(-geometry.nucleus_distance / decay)
    network = density * (np.float32(0.2) + np.float32(0.8) * anatomy.er_network) * geometry.cytoplasm
    width = _px(anatomy, 1.0, 0.6)
    envelope = np.exp(-(geometry.nucleus_distance**2) / np.float32(2 * width * width)) * geometry.cytoplasm
    return network + np.float32(0.3) * envelope


def golgi_apparatus(anatomy: CellAnatomy, rng: np.random.Generator) -> np.ndarray:
    """7 Golgi apparatus: a fragmented crescent hugging one side of the nucleus (the MTOC side)."""
    geometry = anatomy.geometry
    spread = rng.uniform(0.45, 0.8)  # angular half-width (rad) of the crescent, von Mises shaped
    alignment = _alignment(anatomy, anatomy.nucleus_centre, anatomy.golgi_angle)
    angular = np.exp((alignment - np.float32(1.0)) * np.float32(1.0 / (spread * spread)))
    offset = np.float32(rng.uniform(0.06, 0.14) * anatomy.radius)
    thickness = np.float32(max(0.09 * anatomy.radius, 1.0))
    radial = np.exp(-((geometry.nucleus_distance - offset) ** 2) / (np.float32(2.0) * thickness * thickness))
    stacks = np.maximum(
        smooth_noise(rng, geometry.shape, _px(anatomy, 1.1, 0.8)) + np.float32(0.4), np.float32(0.0)
    )
    return angular * radial * stacks * geometry.cytoplasm


def peroxisomes(anatomy: CellAnatomy, rng: np.random.Generator) -> np.ndarray:
    """8 Peroxisomes: many (25-70) small, dim, evenly spread puncta throughout the cytoplasm."""
    return _cytoplasm_spots(anatomy, rng, int(rng.integers(25, 71)), 0.6, brightness=(0.5, 0.9))


def endosomes(anatomy: CellAnatomy, rng: np.random.Generator) -> np.ndarray:
    """9 Endosomes: 15-45 medium puncta of uneven brightness, somewhat concentrated around the nucleus."""
    weights = _perinuclear_weight(anatomy, 0.5, 0.35)
    return _cytoplasm_spots(anatomy, rng, int(rng.integers(15, 46)), 0.95, weights, brightness=(0.25, 1.0))


def lysosomes(anatomy: CellAnatomy, rng: np.random.Generator) -> np.ndarray:
    """10 Lysosomes: 15-40 larger, bright puncta clustered tightly around the nucleus."""
    weights = _perinuclear_weight(anatomy, 0.22, 0.03)
    return _cytoplasm_spots(anatomy, rng, int(rng.integers(15, 41)), 1.25, weights, brightness=(0.6, 1.0))


def lipid_droplets(anatomy: CellAnatomy, rng: np.random.Generator) -> np.ndarray:
    """20 Lipid droplets: 4-16 ring-shaped droplets (protein on the droplet surface), 2-4 px radius at 512."""
    geometry = anatomy.geometry
    count = int(rng.integers(4, 17))
    radii = np.array([_px(anatomy, r, 1.0) for r in rng.uniform(1.8, 3.6, count)])
    region = geometry.cytoplasm & (geometry.edge_distance > float(radii.mean()) + 1.0)
    if not region.any():
        region = geometry.cytoplasm
    centres = sample_points_in_mask(rng, region, count)
    rings = draw_rings(geometry.shape, centres, radii, rng.uniform(0.6, 1.0, count))
    return blur(rings, _px(anatomy, 0.4, 0.3)) * geometry.cytoplasm


def cytoplasmic_bodies(anatomy: CellAnatomy, rng: np.random.Generator) -> np.ndarray:
    """26 Cytoplasmic bodies: 1-5 large, bright, distinct bodies anywhere in the cytoplasm."""
    return _cytoplasm_spots(anatomy, rng, int(rng.integers(1, 6)), 1.8, brightness=(0.6, 1.0))


def aggresome(anatomy: CellAnatomy, rng: np.random.Generator) -> np.ndarray:
    """24 Aggresome: one big, bright, irregular perinuclear body next to the nucleus at the MTOC."""
    geometry = anatomy.geometry
    direction = np.array([np.sin(anatomy.golgi_angle), np.cos(anatomy.golgi_angle)])
    centre = anatomy.mtoc + direction * _px(anatomy, 1.5)
    lobes = centre[None] + rng.normal(0.0, _px(anatomy, 1.2), (3, 2))
    body = gaussian_spots(
        geometry.shape, np.concatenate([centre[None], lobes]), _px(anatomy, 2.4, 0.8), [1.0, 0.6, 0.6, 0.6]
    )
    return body * geometry.cytoplasm + np.float32(0.03) * _cytoplasm_fill(anatomy)


# --------------------------------------------------------------------------------------------------
# Cytoskeleton
# --------------------------------------------------------------------------------------------------


def intermediate_filaments(anatomy: CellAnatomy, rng: np.random.Generator) -> np.ndarray:
    """11 Intermediate filaments: long, wavy, meandering fibres wrapping around the nucleus as a cage and
    thinning out towards the periphery (unlike straight radial microtubules or parallel actin cables)."""
    geometry = anatomy.geometry
    count = int(rng.integers(14, 26))
    band = geometry.cytoplasm & (geometry.nucleus_distance < max(0.35 * anatomy.radius, 2.0))
    if not band.any():
        band = geometry.cytoplasm
    starts = sample_points_in_mask(rng, band, count)
    radial = starts - anatomy.nucleus_centre[None]
    tangent = np.arctan2(radial[:, 1], -radial[:, 0])  # perpendicular to the radial direction
    headings = tangent + np.pi * (rng.random(count) < 0.5) + rng.normal(0.0, 0.35, count)
    step = _px(anatomy, 1.4, 0.9)
    n_steps = int(np.ceil(1.6 * anatomy.radius / step))
    waves = rng.uniform(0.15, 0.3, (count, 1)) * np.sin(
        np.arange(n_steps)[None, :] * rng.uniform(0.35, 0.6, (count, 1))
        + rng.uniform(0, 2 * np.pi, (count, 1))
    )
    turns = (
        np.cumsum(rng.normal(0.0, 0.12, (count, n_steps)) + rng.normal(0.0, 0.05, (count, 1)), axis=1) + waves
    )
    angles = headings[:, None] + turns
    points = np.empty((count, n_steps + 1, 2))
    points[:, 0] = starts
    points[:, 1:, 0] = starts[:, 0:1] + np.cumsum(step * np.sin(angles), axis=1)
    points[:, 1:, 1] = starts[:, 1:2] + np.cumsum(step * np.cos(angles), axis=1)
    cage = draw_polylines(geometry.shape, PolylineSet.from_array(points), rng.uniform(0.4, 1.0, count))
    return cage * geometry.mask * np.where(geometry.nucleus, np.float32(0.3), np.float32(1.0))


def actin_filaments(anatomy: CellAnatomy, rng: np.random.Generator) -> np.ndarray:
    """12 Actin filaments: straight, parallel stress fibres crossing the cell along one direction, plus a
    faint cortical rim."""
    geometry = anatomy.geometry
    height, width = geometry.shape
    angle = anatomy.geometry.plan.angle + rng.normal(0.0, 0.25)
    direction = np.array([np.sin(angle), np.cos(angle)])
    normal = np.array([direction[1], -direction[0]])
    centre = np.array([height / 2, width / 2])
    half = np.hypot(height, width) / 2
    spacing = _px(anatomy, rng.uniform(2.6, 4.2), 1.2)
    offsets = np.arange(-half, half, spacing) + rng.uniform(0, spacing)
    mids = (
        centre[None]
        + offsets[:, None] * normal[None]
        + rng.normal(0.0, 0.15 * half, (len(offsets), 1)) * direction[None]
    )
    reach = (half * rng.uniform(0.5, 1.0, len(offsets)))[:, None] * direction[None]
    lines = PolylineSet.from_array(np.stack([mids - reach, mids + reach], axis=1))
    cables = draw_polylines(geometry.shape, lines, rng.uniform(0.3, 1.0, len(lines)))
    cortex = _band(geometry.edge_distance, _px(anatomy, 0.9, 0.6))
    return (
        cables * np.where(geometry.nucleus, np.float32(0.5), np.float32(1.0)) + np.float32(0.25) * cortex
    ) * geometry.mask


def focal_adhesion_sites(anatomy: CellAnatomy, rng: np.random.Generator) -> np.ndarray:
    """13 Focal adhesion sites: 8-30 short streaks at the cell edge, each pointing radially inwards."""
    geometry = anatomy.geometry
    rim = geometry.mask & (geometry.edge_distance <= _px(anatomy, 3.5, 1.5)) & ~geometry.nucleus
    if not rim.any():
        rim = geometry.cytoplasm
    weights = np.where(geometry.contact, np.float32(0.15), np.float32(1.0))
    count = int(rng.integers(8, 31))
    tips = sample_points_in_mask(rng, rim, count, weights)
    ys, xs = np.nonzero(geometry.mask)
    centroid = np.array([ys.mean(), xs.mean()])
    inward = centroid[None] - tips
    inward /= np.maximum(np.hypot(inward[:, 0], inward[:, 1]), 1e-6)[:, None]
    lengths = np.maximum(rng.uniform(2.5, 5.5, (len(tips), 1)) * anatomy.scale, 1.5)
    streaks = PolylineSet.from_array(np.stack([tips, tips + lengths * inward], axis=1))
    return draw_polylines(geometry.shape, streaks, rng.uniform(0.6, 1.0, len(streaks))) * geometry.mask


def microtubules(anatomy: CellAnatomy, rng: np.random.Generator) -> np.ndarray:
    """14 Microtubules: the same fibres as the red channel, radiating from the MTOC to the cell edge."""
    geometry = anatomy.geometry
    fibres = draw_polylines(geometry.shape, anatomy.fibres, rng.uniform(0.5, 1.0, len(anatomy.fibres)))
    return fibres * np.where(geometry.nucleus, np.float32(0.4), np.float32(1.0)) * geometry.mask + np.float32(
        0.04
    ) * _cytoplasm_fill(anatomy)


def microtubule_ends(anatomy: CellAnatomy, rng: np.random.Generator) -> np.ndarray:
    """15 Microtubule ends: comet-shaped dots at the growing (plus) ends of astral microtubules near the
    periphery of a dividing cell, plus a few comets part-way along fibres."""
    _require_stage(anatomy, 15)
    geometry = anatomy.geometry
    fibres = anatomy.fibres
    long_enough = fibres.lengths >= 3
    ends = fibres.lengths - 1
    inner = (ends * rng.uniform(0.5, 0.9, len(fibres))).astype(np.intp)
    extra = long_enough & (rng.random(len(fibres)) < 0.4)
    heads = np.concatenate([fibres.point_at(ends)[long_enough], fibres.point_at(inner)[extra]])
    backs = np.concatenate([fibres.point_at(ends - 2)[long_enough], fibres.point_at(inner - 2)[extra]])
    direction = heads - backs
    direction /= np.maximum(np.hypot(direction[:, 0], direction[:, 1]), 1e-6)[:, None]
    tails = heads - _px(anatomy, 1.3, 0.8) * direction
    comets = gaussian_spots(geometry.shape, heads, _px(anatomy, 0.6, 0.45), 1.0)
    comets += gaussian_spots(geometry.shape, tails, _px(anatomy, 0.7, 0.45), 0.45)
    return comets * geometry.mask + np.float32(0.03) * geometry.mask


def cytokinetic_bridge(anatomy: CellAnatomy, rng: np.random.Generator) -> np.ndarray:
    """16 Cytokinetic bridge: a thin bright line along the bridge joining two telophase daughters, with a
    brighter midbody at its centre."""
    _require_stage(anatomy, 16)
    geometry = anatomy.geometry
    bridge = anatomy.bridge
    line = draw_polylines(geometry.shape, PolylineSet.from_array(bridge[None]), 1.0, thickness=1)
    midbody = gaussian_spots(geometry.shape, bridge.mean(axis=0)[None], _px(anatomy, 1.0, 0.6), 1.2)
    return (blur(line, _px(anatomy, 0.3, 0.3)) + midbody) * geometry.mask + np.float32(0.02) * geometry.mask


def mitotic_spindle(anatomy: CellAnatomy, rng: np.random.Generator) -> np.ndarray:
    """17 Mitotic spindle: the bipolar spindle of a metaphase/anaphase cell, fibres converging on two
    bright poles on either side of the chromatin."""
    _require_stage(anatomy, 17)
    geometry = anatomy.geometry
    spindle = draw_polylines(geometry.shape, anatomy.spindle, rng.uniform(0.6, 1.0, len(anatomy.spindle)))
    poles = gaussian_spots(geometry.shape, anatomy.centrosomes, _px(anatomy, 1.1, 0.6), 1.0)
    return (spindle + poles) * geometry.mask + np.float32(0.03) * geometry.mask


def microtubule_organizing_center(anatomy: CellAnatomy, rng: np.random.Generator) -> np.ndarray:
    """18 Microtubule organizing center: one larger, diffuse, bright spot beside the nucleus (at the MTOC),
    with a faint halo."""
    geometry = anatomy.geometry
    centre = anatomy.mtoc[None]
    spot = gaussian_spots(geometry.shape, centre, _px(anatomy, 2.0, 0.9), 1.0)
    halo = gaussian_spots(geometry.shape, centre, _px(anatomy, 5.0, 1.5), 0.12)
    return (spot + halo) * geometry.mask


def centrosome(anatomy: CellAnatomy, rng: np.random.Generator) -> np.ndarray:
    """19 Centrosome: one or two small sharp dots (the centriole pair) right beside the nucleus."""
    geometry = anatomy.geometry
    pair = anatomy.centrosomes if rng.random() < 0.6 else anatomy.centrosomes.mean(axis=0)[None]
    spread = pair + (pair - pair.mean(axis=0)) * 0.8
    return gaussian_spots(geometry.shape, spread, _px(anatomy, 0.55, 0.45), 1.0) * geometry.mask


# --------------------------------------------------------------------------------------------------
# Membranes, mitochondria, cytosol, rods & rings
# --------------------------------------------------------------------------------------------------


def plasma_membrane(anatomy: CellAnatomy, rng: np.random.Generator) -> np.ndarray:
    """21 Plasma membrane: a thin line along the whole cell boundary (free edges and contacts alike)."""
    geometry = anatomy.geometry
    band = _band(geometry.edge_distance, _px(anatomy, 0.9, 0.6)) * geometry.mask
    return band * _texture(anatomy, rng, 2.0, 0.25)


def cell_junctions(anatomy: CellAnatomy, rng: np.random.Generator) -> np.ndarray:
    """22 Cell junctions: the boundary line only where the cell touches a neighbour; free edges stay dark."""
    geometry = anatomy.geometry
    contact = geometry.contact
    if not contact.any():
        raise PatternError(
            f"class 22 needs a cell that touches a neighbour; cell {geometry.cell_id} touches none"
        )
    source = np.where(contact, np.uint8(0), np.uint8(1))
    distance = cv2.distanceTransform(source, cv2.DIST_L2, cv2.DIST_MASK_5)
    band = np.exp(-(distance**2) / np.float32(2 * _px(anatomy, 0.9, 0.6) ** 2)) * geometry.mask
    return band * _texture(anatomy, rng, 2.0, 0.3)


def mitochondria(anatomy: CellAnatomy, rng: np.random.Generator) -> np.ndarray:
    """23 Mitochondria: many short, curved tubules ("worms") throughout the cytoplasm, denser near the nucleus."""
    geometry = anatomy.geometry
    count = int(rng.integers(25, 70))
    weights = _perinuclear_weight(anatomy, 0.6, 0.3)
    starts = sample_points_in_mask(rng, geometry.cytoplasm, count, weights)
    steps = int(rng.integers(3, 6))
    step = _px(anatomy, 1.3, 0.8)
    headings = rng.uniform(0, 2 * np.pi, (len(starts), 1)) + np.cumsum(
        rng.normal(0.0, 0.45, (len(starts), steps)), axis=1
    )
    ys = starts[:, 0:1] + np.cumsum(step * np.sin(headings), axis=1)
    xs = starts[:, 1:2] + np.cumsum(step * np.cos(headings), axis=1)
    worms = np.concatenate([starts[:, None], np.stack([ys, xs], axis=2)], axis=1)
    return (
        draw_polylines(geometry.shape, PolylineSet.from_array(worms), rng.uniform(0.5, 1.0, len(worms)))
        * geometry.cytoplasm
    )


def cytosol(anatomy: CellAnatomy, rng: np.random.Generator) -> np.ndarray:
    """25 Cytosol: diffuse, smooth signal filling the cytoplasm, with a weaker share in the nucleus."""
    nuclear_share = np.float32(rng.uniform(0.05, 0.3))
    texture = _texture(anatomy, rng, 3.0, 0.12)
    return (_cytoplasm_fill(anatomy) + nuclear_share * _nucleoplasm_fill(anatomy)) * texture


def rods_and_rings(anatomy: CellAnatomy, rng: np.random.Generator) -> np.ndarray:
    """27 Rods & rings: 1-4 bright elongated rods (4-9 px at 512) and small rings in the cytoplasm."""
    geometry = anatomy.geometry
    count = int(rng.integers(1, 5))
    region = geometry.cytoplasm & (geometry.edge_distance > _px(anatomy, 3.0, 1.0))
    if not region.any():
        region = geometry.cytoplasm
    centres = sample_points_in_mask(rng, region, count)
    is_rod = rng.random(len(centres)) < 0.6
    rod_centres = centres[is_rod]
    angle = rng.uniform(0, np.pi, (len(rod_centres), 1))
    half = np.maximum(rng.uniform(2.0, 4.5, (len(rod_centres), 1)) * anatomy.scale, 1.2) * np.concatenate(
        [np.sin(angle), np.cos(angle)], axis=1
    )
    rods = PolylineSet.from_array(np.stack([rod_centres - half, rod_centres + half], axis=1))
    image = draw_polylines(geometry.shape, rods, rng.uniform(0.8, 1.0, len(rods)))
    ring_centres = centres[~is_rod]
    radii = np.array([_px(anatomy, r, 1.0) for r in rng.uniform(1.5, 2.5, len(ring_centres))])
    image = np.maximum(image, draw_rings(geometry.shape, ring_centres, radii, 0.9))
    return blur(image, _px(anatomy, 0.35, 0.3)) * geometry.cytoplasm


PATTERN_GENERATORS: Mapping[int, PatternGenerator] = MappingProxyType(
    {
        0: nucleoplasm,
        1: nuclear_membrane,
        2: nucleoli,
        3: nucleoli_fibrillar_center,
        4: nuclear_speckles,
        5: nuclear_bodies,
        6: endoplasmic_reticulum,
        7: golgi_apparatus,
        8: peroxisomes,
        9: endosomes,
        10: lysosomes,
        11: intermediate_filaments,
        12: actin_filaments,
        13: focal_adhesion_sites,
        14: microtubules,
        15: microtubule_ends,
        16: cytokinetic_bridge,
        17: mitotic_spindle,
        18: microtubule_organizing_center,
        19: centrosome,
        20: lipid_droplets,
        21: plasma_membrane,
        22: cell_junctions,
        23: mitochondria,
        24: aggresome,
        25: cytosol,
        26: cytoplasmic_bodies,
        27: rods_and_rings,
    }
)
"""Class id -> generator; every one of the 28 classes has exactly one."""
assert sorted(PATTERN_GENERATORS) == list(range(NUM_CLASSES))


def effective_coverage(pattern: np.ndarray, cell_area: int) -> float:
    """Fraction of the cell a pattern effectively covers: (sum p)^2 / sum p^2 / area (1 for a flat fill)."""
    flat = pattern.ravel()
    total = float(flat.sum(dtype=np.float64))
    if total <= 0 or cell_area <= 0:
        return 0.0
    return min(total * total / float(np.dot(flat, flat)) / cell_area, 1.0)


def normalise_pattern(pattern: np.ndarray, cell_area: int) -> np.ndarray:
    """Rescale a raw pattern so its mean over the cell is coverage ** `COVERAGE_EXPONENT` (see module doc)."""
    coverage = effective_coverage(pattern, cell_area)
    if coverage <= 0:
        return pattern
    total = float(pattern.sum(dtype=np.float64))
    return pattern * np.float32(cell_area * coverage**COVERAGE_EXPONENT / total)


def draw_pattern(class_id: int, anatomy: CellAnatomy, rng: np.random.Generator) -> np.ndarray:
    """The normalised green pattern of `class_id` in one cell; raises `PatternError` if nothing could be drawn."""
    if class_id not in PATTERN_GENERATORS:
        raise PatternError(f"unknown class id {class_id}; expected 0-{NUM_CLASSES - 1}")
    raw = PATTERN_GENERATORS[class_id](anatomy, rng).astype(np.float32, copy=False)
    raw = raw * anatomy.geometry.mask
    if not np.any(raw > 0):
        raise PatternError(f"class {class_id} drew an empty pattern in cell {anatomy.geometry.cell_id}")
    return normalise_pattern(raw, anatomy.geometry.area)
