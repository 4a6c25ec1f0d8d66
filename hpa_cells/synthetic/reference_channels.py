"""The three reference stains of a synthetic field: microtubules (red), nucleus (blue), ER (yellow).

All cells are drawn at once from the field's landmarks (`FieldAnatomy`) into `H,W` float32 canvases
in relative units (about 1 for the brightest typical structure); `microscope.acquire` later blurs,
scales and adds noise. Each cell gets its own brightness per channel, as stain uptake varies.

- Blue: nucleus fill with chromatin texture, darker nucleoli and a slightly brighter rim; condensed,
  brighter chromatin in dividing cells.
- Red: faint diffuse tubulin plus fibres radiating from the MTOC to the cell edge, dimmer over the
  nucleus; spindle, asters and bright poles in dividing cells, a bright bundle in the cytokinetic bridge.
- Yellow: the reticular ER texture, densest next to the nucleus and fading towards the periphery,
  plus the nuclear envelope; diffuse in dividing cells.
"""

from __future__ import annotations

import cv2
import numpy as np

from hpa_cells.synthetic.anatomy import FieldAnatomy
from hpa_cells.synthetic.cell_lines import length_scale
from hpa_cells.synthetic.drawing import PolylineSet, draw_polylines, gaussian_spots, smooth_noise

STAIN_BRIGHTNESS_SPREAD = 0.2
"""Standard deviation of the log brightness of each stain between cells."""


def per_cell_map(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """`H,W` float32 map of a per-cell value: `values[label]` at every pixel (`values[0]` for background).

    Uses an 8-bit look-up table (`cv2.LUT`, much faster than fancy indexing) when the labels fit in uint8.
    """
    values = np.asarray(values, dtype=np.float32)
    if labels.dtype == np.uint8:
        table = np.zeros(256, dtype=np.float32)
        table[: len(values)] = values
        return cv2.LUT(labels, table)
    return values[labels]


def render_reference_channels(
    rng: np.random.Generator, anatomy: FieldAnatomy
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`H,W` float32 red (microtubules), blue (nucleus) and yellow (ER) signal of a whole field."""
    layout = anatomy.layout
    n_cells = len(layout.cells)
    if n_cells > 255:
        raise ValueError(f"{n_cells} cells: at most 255 fit the 8-bit look-up tables")
    cells = layout.cell_mask.astype(np.uint8)
    nuclei = layout.nucleus_mask.astype(np.uint8)
    dividing = np.zeros(n_cells + 1, dtype=bool)
    dividing[1:] = [cell.dividing for cell in layout.cells]
    brightness = np.exp(rng.normal(0.0, STAIN_BRIGHTNESS_SPREAD, (3, n_cells + 1))).astype(np.float32)
    brightness[:, 0] = 0.0
    # The order blue, red, yellow is the order of their random draws: keep it (same images per seed).
    blue = _blue_channel(rng, anatomy, nuclei, dividing, brightness[1])
    red = _red_channel(rng, anatomy, cells, nuclei > 0, dividing, brightness[0])
    yellow = _yellow_channel(rng, anatomy, cells, nuclei > 0, dividing, brightness[2])
    return red, blue, yellow


def _blue_channel(
    rng: np.random.Generator,
    anatomy: FieldAnatomy,
    nuclei: np.ndarray,
    dividing: np.ndarray,
    brightness: np.ndarray,
) -> np.ndarray:
    """Blue: nuclei (in-place arithmetic throughout: these are full-image arrays)."""
    layout = anatomy.layout
    size = layout.size
    scale = length_scale(size)
    depth = layout.nucleus_depth
    blue = smooth_noise(rng, (size, size), max(1.6 * scale, 0.8))
    blue *= np.float32(0.18)
    blue += np.float32(1.0)
    rim = depth * np.float32(-1.0 / max(1.5 * scale, 0.8))
    np.exp(rim, out=rim)
    rim *= np.float32(0.15)
    blue += rim
    darker = anatomy.nucleoli_map * np.float32(-0.55)
    darker += np.float32(1.0)
    blue *= darker
    soft_edge = depth * np.float32(1.0 / max(1.2 * scale, 0.7))
    np.minimum(soft_edge, np.float32(1.0), out=soft_edge)
    soft_edge *= np.float32(0.65)
    soft_edge += np.float32(0.35)
    blue *= soft_edge
    blue *= per_cell_map(brightness * np.where(dividing, 1.7, 1.0), nuclei)  # condensed chromatin is brighter
    np.maximum(blue, np.float32(0.0), out=blue)
    return blue


def _red_channel(
    rng: np.random.Generator,
    anatomy: FieldAnatomy,
    cells: np.ndarray,
    in_nucleus: np.ndarray,
    dividing: np.ndarray,
    brightness: np.ndarray,
) -> np.ndarray:
    """Red: microtubules (fibres, centrosomes, spindles, bridges) over a diffuse cytoplasmic fill."""
    layout = anatomy.layout
    size = layout.size
    scale = length_scale(size)
    fibres = anatomy.fibres
    red = draw_polylines((size, size), fibres, rng.uniform(0.3, 0.8, len(fibres)))
    diffuse = layout.edge_distance * np.float32(0.5 / max(4.0 * scale, 1.0))
    np.minimum(diffuse, np.float32(0.5), out=diffuse)
    diffuse += np.float32(0.5)
    diffuse *= per_cell_map(np.where(dividing, 0.3, 0.22), cells)
    red += diffuse
    red += gaussian_spots((size, size), anatomy.centrosomes.reshape(-1, 2), max(1.8 * scale, 0.8), 0.35)
    if len(anatomy.spindle):
        spindle = draw_polylines((size, size), anatomy.spindle, rng.uniform(0.8, 1.0, len(anatomy.spindle)))
        spindle *= np.float32(1.3)
        np.maximum(red, spindle, out=red)
    divider_poles = anatomy.centrosomes[dividing[1:]].reshape(-1, 2)
    if len(divider_poles):
        red += gaussian_spots((size, size), divider_poles, max(1.2 * scale, 0.7), 0.8)
    if anatomy.bridges:
        bridges = PolylineSet.from_array(np.stack(list(anatomy.bridges.values())))
        bundle = draw_polylines((size, size), bridges, 1.0, thickness=max(1, round(1.5 * scale)))
        bundle *= np.float32(1.4)
        np.maximum(red, bundle, out=red)
    red *= per_cell_map(brightness, cells)  # zero on background
    red[in_nucleus] *= np.float32(0.35)
    return red


def _yellow_channel(
    rng: np.random.Generator,
    anatomy: FieldAnatomy,
    cells: np.ndarray,
    in_nucleus: np.ndarray,
    dividing: np.ndarray,
    brightness: np.ndarray,
) -> np.ndarray:
    """Yellow: endoplasmic reticulum, denser near the nucleus, with a nuclear envelope; dispersed in mitosis."""
    layout = anatomy.layout
    scale = length_scale(layout.size)
    decay = np.ones(len(layout.cells) + 1, dtype=np.float32)
    decay[1:] = [rng.uniform(0.3, 0.5) * cell.plan.radius for cell in layout.cells]
    density = layout.nucleus_distance * per_cell_map(-1.0 / decay, cells)
    np.exp(density, out=density)
    density *= np.float32(0.82)
    density += np.float32(0.18)
    network = anatomy.er_network
    yellow = network * np.float32(0.7)
    yellow += np.float32(0.3)
    yellow *= density
    envelope = layout.nucleus_distance - np.float32(0.5)
    envelope *= np.float32(1.0 / max(1.2 * scale, 0.6))
    envelope *= envelope
    envelope *= np.float32(-1.0)
    np.exp(envelope, out=envelope)
    envelope *= np.float32(0.35)
    yellow += envelope
    if dividing.any():  # mitotic ER is dispersed
        np.copyto(
            yellow, np.float32(0.35) + np.float32(0.35) * network, where=per_cell_map(dividing, cells) > 0
        )
    np.copyto(yellow, np.float32(0.06), where=in_nucleus)
    yellow *= per_cell_map(brightness, cells)
    return yellow
