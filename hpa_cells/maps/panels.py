"""Value panels of one image: cells painted by their probability for one class (`render_class_panel`), a dense
model's per-pixel map of a class (`render_pixel_panel`) and the attention panel (`render_attention_panel`), each
over the grey protein channel with outlines, hatching, a colour bar and a title."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageDraw

from hpa_cells.channels import PROTEIN
from hpa_cells.classes import CLASS_NAMES, NUM_CLASSES
from hpa_cells.composite import grey_channel
from hpa_cells.maps.drawing import (
    Fonts,
    dashes,
    enlarged,
    fit_text,
    inner_boundaries,
    stack,
    stripes,
    title_block,
)
from hpa_cells.maps.prediction_run import FieldView
from hpa_cells.maps.style import BACKGROUND, MUTED_TEXT, QC_GREY, TEXT, MapStyle, colour_lut
from hpa_cells.predictions import PredictionFolderError


def _colour_bar(height: int, lut: np.ndarray, vmin: float, vmax: float, ticks: Sequence[float],
                marker: float | None, fonts: Fonts, caption: str) -> Image.Image:
    """A vertical colour bar (top = vmax) with tick labels, an optional marker line, and a rotated caption."""
    bar_w, width, pad = 16, 92, 12
    strip = np.linspace(255, 0, max(height - 2 * pad, 2)).round().astype(np.int64)
    panel = Image.new("RGB", (width, height), BACKGROUND)
    colours = np.repeat(lut[strip][:, None, :], bar_w, axis=1)
    panel.paste(Image.fromarray(colours), (8, pad))
    draw = ImageDraw.Draw(panel)
    span = max(vmax - vmin, 1e-12)

    def y_of(value: float) -> int:
        return int(pad + (1.0 - (value - vmin) / span) * (len(strip) - 1))

    marker_y = y_of(marker) if marker is not None and vmin <= marker <= vmax else None
    label_x = 8 + bar_w + 7
    for tick in ticks:
        y = y_of(tick)
        draw.line([(8 + bar_w, y), (8 + bar_w + 4, y)], fill=TEXT)
        if marker_y is None or abs(y - marker_y) > fonts.regular.size + 2:
            draw.text((label_x, y - fonts.regular.size // 2 - 1), f"{tick:.2g}", font=fonts.regular, fill=TEXT)
    if marker_y is not None:
        draw.line([(4, marker_y), (8 + bar_w + 3, marker_y)], fill=(255, 255, 255), width=2)
        draw.text((label_x, marker_y - fonts.regular.size - 3), "thr", font=fonts.bold, fill=(255, 255, 255))
        draw.text((label_x, marker_y), f"{marker:.2f}", font=fonts.bold, fill=(255, 255, 255))
    text = Image.new("RGBA", (height - 2 * pad, fonts.regular.size + 6), (0, 0, 0, 0))
    ImageDraw.Draw(text).text((0, 0), fit_text(caption, fonts.regular, text.width), font=fonts.regular, fill=MUTED_TEXT)
    rotated = text.rotate(90, expand=True)
    panel.paste(rotated, (width - rotated.width - 2, pad), rotated)
    return panel


@dataclass(frozen=True)
class PanelOverlay:
    """Cell outlines and the hatching of one set of cells, as one layer blended over a painted panel:
    colour `H,W,3` uint8 with per-pixel weight `H,W` float32 (`keep` = 1 - weight), at working size."""

    colour: np.ndarray
    weight: np.ndarray
    keep: np.ndarray

    @classmethod
    def of(cls, view: FieldView, hatched: np.ndarray) -> PanelOverlay:
        """Outlines of every cell (light, translucent), stripes and a dashed grey outline on `hatched` cells."""
        labels = view.cells_hw
        edge = inner_boundaries(labels)
        hatched_px = view.cell_lookup(np.asarray(hatched, bool), fill=False)[labels]
        premultiplied = np.zeros((*labels.shape, 3), np.float32)
        alpha = np.zeros(labels.shape, np.float32)
        layers = ((hatched_px & stripes(labels.shape, 6), QC_GREY, 0.5), (edge, (235, 235, 235), 0.55),
                  (edge & hatched_px & dashes(labels.shape, 3), QC_GREY, 1.0))
        for where, colour, opacity in layers:  # "over" compositing, premultiplied by alpha
            premultiplied[where] = np.float32(opacity) * np.asarray(colour, np.float32) \
                + premultiplied[where] * np.float32(1 - opacity)
            alpha[where] = opacity + alpha[where] * np.float32(1 - opacity)
        colour = np.zeros((*labels.shape, 3), np.uint8)
        covered = alpha > 0
        colour[covered] = np.clip(premultiplied[covered] / alpha[covered][:, None] + 0.5, 0, 255).astype(np.uint8)
        return cls(colour, alpha, 1 - alpha)


@dataclass(frozen=True)
class PanelCanvas:
    """What every value panel of one image shares, computed once (working size): the grey protein backdrop
    `H,W,3` uint8, the cell labels as indices, the per-pixel paint weight (panel alpha inside predicted cells, 0
    elsewhere) and the overlays hatching QC-flagged cells (class panels) and cells left out of the pooling
    (attention panel). Panels are then a lookup and two `cv2.blendLinear` calls."""

    base: np.ndarray
    labels: np.ndarray
    paint_weight: np.ndarray
    base_weight: np.ndarray
    flagged: PanelOverlay
    unpooled: PanelOverlay

    @classmethod
    def of(cls, view: FieldView, style: MapStyle) -> PanelCanvas:
        grey = (grey_channel(view.image_chw, PROTEIN, style.composite) * 0.85).astype(np.uint8)
        labels = view.cells_hw.astype(np.intp)
        present = view.cell_lookup(np.ones(len(view.cells), bool), fill=False)
        paint = np.where(np.take(present, labels), np.float32(style.panel_alpha), np.float32(0.0))
        flagged = view.flagged
        unpooled = ~view.cells["used_for_image"].astype(bool).to_numpy()
        flagged_overlay = PanelOverlay.of(view, flagged)
        same = np.array_equal(flagged, unpooled)
        return cls(grey, labels, paint, 1 - paint, flagged_overlay,
                   flagged_overlay if same else PanelOverlay.of(view, unpooled))


def _value_panel(view: FieldView, values: np.ndarray, lut: np.ndarray, vmin: float, vmax: float,
                 overlay: PanelOverlay, style: MapStyle, canvas: PanelCanvas) -> np.ndarray:
    """`H',W',3` uint8 (panel scale): the grey protein channel with each cell painted by lut(value), under the
    outline/hatching `overlay`."""
    index = np.clip(np.round((np.asarray(values, np.float64) - vmin) / max(vmax - vmin, 1e-12) * 255), 0, 255)
    colour_of = view.cell_lookup(lut[index.astype(np.int64)].astype(np.uint8))
    painted = np.take(colour_of, canvas.labels, axis=0)
    out = cv2.blendLinear(canvas.base, painted, canvas.base_weight, canvas.paint_weight)
    out = cv2.blendLinear(out, overlay.colour, overlay.keep, overlay.weight)
    return enlarged(out, style.panel_scale)


def render_class_panel(view: FieldView, class_id: int, style: MapStyle | None = None,
                       canvas: PanelCanvas | None = None) -> np.ndarray:
    """`H',W',3` uint8 RGB: cells painted by their probability for `class_id` (0-1), with a colour bar.
    `canvas`: the image's shared `PanelCanvas` when drawing several panels."""
    style = style or MapStyle()
    canvas = canvas or PanelCanvas.of(view, style)
    if not 0 <= class_id < NUM_CLASSES:
        raise ValueError(f"class id {class_id} out of range 0-{NUM_CLASSES - 1}")
    fonts = Fonts.load(style.font_px)
    name = CLASS_NAMES[class_id]
    probs = view.cells[name].to_numpy(dtype=np.float64)
    threshold = float(view.thresholds[class_id])
    rgb = _value_panel(view, probs, colour_lut(style.probability_cmap), 0.0, 1.0, canvas.flagged, style, canvas)
    image = Image.fromarray(rgb)
    bar = _colour_bar(image.height, colour_lut(style.probability_cmap), 0.0, 1.0, (0, 0.25, 0.5, 0.75, 1.0),
                      threshold, fonts, "cell probability")
    body = Image.new("RGB", (image.width + bar.width, image.height), BACKGROUND)
    body.paste(image, (0, 0))
    body.paste(bar, (image.width, 0))
    status = "predicted" if class_id in view.predicted else "not predicted"
    above = int((probs >= threshold).sum())
    title = title_block(body.width, [
        (f"{name} ({class_id})", fonts.title, TEXT),
        (f"image p = {view.image_probs[class_id]:.2f}, threshold {threshold:.2f}: {status}", fonts.regular, TEXT),
        (f"cells at/above threshold: {above}/{len(probs)}; median cell p = {np.median(probs):.2f}; "
         "hatched = QC-flagged", fonts.regular, MUTED_TEXT),
    ])
    return np.asarray(stack(title, body))


def render_pixel_panel(view: FieldView, class_id: int, style: MapStyle | None = None,
                       canvas: PanelCanvas | None = None) -> np.ndarray:
    """`H',W',3` uint8 RGB: inside each cell, every pixel painted by its own probability for `class_id` (a dense
    model's pixel map, 0-1 as in the class panel), with a colour bar."""
    if view.pixel_probs is None:
        raise PredictionFolderError(f"image {view.image_id}: no pixel map (pixel panels need a dense model)")
    if not 0 <= class_id < NUM_CLASSES:
        raise ValueError(f"class id {class_id} out of range 0-{NUM_CLASSES - 1}")
    style = style or MapStyle()
    canvas = canvas or PanelCanvas.of(view, style)
    fonts = Fonts.load(style.font_px)
    lut = colour_lut(style.probability_cmap)
    plane = view.pixel_probs[class_id]
    painted = np.ascontiguousarray(lut[plane])
    out = cv2.blendLinear(canvas.base, painted, canvas.base_weight, canvas.paint_weight)
    out = cv2.blendLinear(out, canvas.flagged.colour, canvas.flagged.keep, canvas.flagged.weight)
    image = Image.fromarray(enlarged(out, style.panel_scale))
    threshold = float(view.thresholds[class_id])
    bar = _colour_bar(image.height, lut, 0.0, 1.0, (0, 0.25, 0.5, 0.75, 1.0), threshold, fonts, "pixel probability")
    body = Image.new("RGB", (image.width + bar.width, image.height), BACKGROUND)
    body.paste(image, (0, 0))
    body.paste(bar, (image.width, 0))
    inside = plane[view.cells_hw > 0]
    peak = float(inside.max()) / 255 if inside.size else 0.0
    title = title_block(body.width, [
        (f"{CLASS_NAMES[class_id]} ({class_id}): pixel map", fonts.title, TEXT),
        (f"each pixel's own probability inside its cell (dense model); image p = {view.image_probs[class_id]:.2f}",
         fonts.regular, TEXT),
        (f"highest pixel p = {peak:.2f}; hatched = QC-flagged", fonts.regular, MUTED_TEXT),
    ])
    return np.asarray(stack(title, body))


def render_attention_panel(view: FieldView, style: MapStyle | None = None,
                           canvas: PanelCanvas | None = None) -> np.ndarray:
    """`H',W',3` uint8 RGB: cells painted by attention (0 to the image's largest), pooled-out cells hatched."""
    style = style or MapStyle()
    canvas = canvas or PanelCanvas.of(view, style)
    fonts = Fonts.load(style.font_px)
    attention = view.cells["attention"].to_numpy(dtype=np.float64)
    used = view.cells["used_for_image"].astype(bool).to_numpy()
    vmax = float(attention.max()) if attention.size and attention.max() > 0 else 1.0
    lut = colour_lut(style.attention_cmap)
    rgb = _value_panel(view, attention, lut, 0.0, vmax, canvas.unpooled, style, canvas)
    image = Image.fromarray(rgb)
    bar = _colour_bar(image.height, lut, 0.0, vmax, tuple(np.linspace(0, vmax, 5)), None, fonts, "attention")
    body = Image.new("RGB", (image.width + bar.width, image.height), BACKGROUND)
    body.paste(image, (0, 0))
    body.paste(bar, (image.width, 0))
    uniform = 1.0 / max(int(used.sum()), 1)
    title = title_block(body.width, [
        ("Attention", fonts.title, TEXT),
        (f"each cell's weight in the image-level pooling ({int(used.sum())} pooled cells; uniform = {uniform:.3f})",
         fonts.regular, TEXT),
        (f"hatched = left out of the pooling (QC-flagged): {int((~used).sum())} cells", fonts.regular, MUTED_TEXT),
    ])
    return np.asarray(stack(title, body))


