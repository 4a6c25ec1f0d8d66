"""A contact sheet of the 28 synthetic green patterns, for looking at what the generator makes.

One tile per class (4 rows x 7 columns): a crop around one cell carrying that class, shown as the
HPA colour composite (red microtubules, green protein, blue nucleus, yellow ER) and as the green
channel alone (contrast-stretched, carrier cell outlined), with the class id and name.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from hpa_cells.classes import CLASS_NAMES, NUM_CLASSES
from hpa_cells.synthetic.dataset import SyntheticConfig, SyntheticGenerator, SyntheticSample

logger = logging.getLogger(__name__)

TILE_COLUMNS = 7
LABEL_BAND = 18
OUTLINE_BGR = (200, 90, 90)


def composite_rgb(image_chw: np.ndarray) -> np.ndarray:
    """`H,W,3` uint8 RGB HPA-style composite of a `4,H,W` uint8 sample (yellow adds to red and green)."""
    red, green, blue, yellow = (plane.astype(np.float32) for plane in image_chw)
    rgb = np.stack([red + 0.6 * yellow, green + 0.6 * yellow, blue], axis=-1)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _square_box(cell_mask: np.ndarray, cell_id: int, margin: float = 0.15) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of a square around a cell, clipped to the image."""
    ys, xs = np.nonzero(cell_mask == cell_id)
    height, width = cell_mask.shape
    centre_y, centre_x = (ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2
    side = max(ys.max() - ys.min(), xs.max() - xs.min()) * (1 + 2 * margin) + 4
    half = side / 2
    y0, x0 = int(max(centre_y - half, 0)), int(max(centre_x - half, 0))
    y1, x1 = int(min(centre_y + half + 1, height)), int(min(centre_x + half + 1, width))
    return y0, y1, x0, x1


def class_tile(sample: SyntheticSample, class_id: int, tile: int) -> np.ndarray:
    """`tile + LABEL_BAND, 2 * tile, 3` BGR tile: composite and green around the largest carrier of `class_id`."""
    carriers = [c for c in sample.cells if class_id in c.labels]
    if not carriers:
        raise ValueError(f"sample {sample.image_id} has no cell carrying class {class_id}")
    inside = [c for c in carriers if not c.touches_border] or carriers
    chosen = max(inside, key=lambda c: c.area)
    y0, y1, x0, x1 = _square_box(sample.cell_mask, chosen.cell_id)
    crop = sample.image[:, y0:y1, x0:x1]
    colour = cv2.cvtColor(composite_rgb(crop), cv2.COLOR_RGB2BGR)
    green = crop[1].astype(np.float32)
    top = max(float(np.percentile(green, 99.7)), 1.0)
    green_bgr = cv2.cvtColor(np.clip(green * (255.0 / top), 0, 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    outline = (sample.cell_mask[y0:y1, x0:x1] == chosen.cell_id).astype(np.uint8)
    contours, _ = cv2.findContours(outline, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    panels = []
    for panel in (colour, green_bgr):
        panel = cv2.resize(
            panel, (tile, tile), interpolation=cv2.INTER_AREA if panel.shape[0] > tile else cv2.INTER_LINEAR
        )
        panels.append(panel)
    scale = tile / max(crop.shape[1], crop.shape[2])
    scaled = [np.rint(c.astype(np.float64) * scale).astype(np.int32) for c in contours]
    cv2.drawContours(panels[1], scaled, -1, OUTLINE_BGR, 1, lineType=cv2.LINE_AA)
    band = np.zeros((LABEL_BAND, 2 * tile, 3), dtype=np.uint8)
    text = f"{class_id} {CLASS_NAMES[class_id]}"
    cv2.putText(
        band, text, (4, LABEL_BAND - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 255), 1, cv2.LINE_AA
    )
    return np.concatenate([band, np.concatenate(panels, axis=1)], axis=0)


def make_contact_sheet(
    path: str | os.PathLike[str],
    seed: int = 0,
    size: int = 512,
    tile: int = 120,
    classes: Sequence[int] = tuple(range(NUM_CLASSES)),
) -> Path:
    """Write a PNG grid with one tile per class (see the module docstring); returns the path.

    Image `i` of the sheet is generated with the label set `(classes[i],)` and seed `seed`, so the
    sheet is deterministic.
    """
    generator = SyntheticGenerator(SyntheticConfig(seed=seed, size=size))
    tiles = []
    for class_id in classes:
        sample = generator.generate(class_id, label_set=(class_id,))
        tiles.append(class_tile(sample, class_id, tile))
    blank = np.zeros_like(tiles[0])
    rows = []
    for start in range(0, len(tiles), TILE_COLUMNS):
        row = tiles[start : start + TILE_COLUMNS]
        row += [blank] * (TILE_COLUMNS - len(row))
        rows.append(np.concatenate([np.pad(t, ((0, 2), (0, 2), (0, 0))) for t in row], axis=1))
    sheet = np.concatenate(rows, axis=0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, encoded = cv2.imencode(".png", sheet, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise OSError(f"cv2 could not encode the contact sheet for {path}")
    path.write_bytes(encoded.tobytes())
    logger.info("wrote a contact sheet of %d classes to %s (%d bytes)", len(tiles), path, len(encoded))
    return path
