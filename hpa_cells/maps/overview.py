"""The overview of one image: the colour composite with every cell tinted and outlined by its top location,
QC-flagged cells hatched, a label per cell, a title and a legend (see `hpa_cells.maps`)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from hpa_cells.classes import CLASS_NAMES, SHORT_NAMES
from hpa_cells.composite import CHANNEL_LEGEND, composite_rgb
from hpa_cells.maps.drawing import (
    Fonts,
    compose,
    dashes,
    enlarged,
    fit_text,
    hatched_swatch,
    inner_boundaries,
    place_labels,
    stack,
    stripes,
    title_block,
)
from hpa_cells.maps.prediction_run import FieldView
from hpa_cells.maps.style import BACKGROUND, MUTED_TEXT, QC_GREY, TEXT, MapStyle, class_colour_table


def _predicted_text(view: FieldView) -> str:
    """'Image-level: Nucleoplasm 0.91, Cytosol 0.72' (the most probable class when none passes its threshold)."""
    if view.predicted:
        ranked = sorted(view.predicted, key=lambda c: -view.image_probs[c])
        return "Image-level: " + ", ".join(f"{CLASS_NAMES[c]} {view.image_probs[c]:.2f}" for c in ranked)
    best = int(np.argmax(view.image_probs))
    return f"Image-level: none above threshold (most probable: {CLASS_NAMES[best]} {view.image_probs[best]:.2f})"


def _flag_counts(view: FieldView) -> dict[str, int]:
    counts: dict[str, int] = {}
    for names in view.cells["qc_flag_names"]:
        for name in str(names).split("|"):
            if name:
                counts[name] = counts.get(name, 0) + 1
    return counts


def _overview_legend(view: FieldView, height: int, style: MapStyle, fonts: Fonts) -> Image.Image:
    legend = Image.new("RGB", (style.legend_width, height), BACKGROUND)
    draw = ImageDraw.Draw(legend)
    step = int(style.font_px * 1.6)
    swatch = style.font_px
    x, y = 10, 10

    def heading(text: str) -> None:
        nonlocal y
        draw.text((x, y), text, font=fonts.bold, fill=TEXT)
        y += step

    def entry(text: str, colour: tuple[int, int, int] | None, hatched: bool = False, muted: bool = False) -> None:
        nonlocal y
        box = (x, y + 1, x + swatch, y + 1 + swatch)
        if hatched:
            hatched_swatch(draw, box)
        elif colour is not None:
            draw.rectangle(box, fill=colour)
        draw.text((x + swatch + 8, y), fit_text(text, fonts.regular, style.legend_width - swatch - 30),
                  font=fonts.regular, fill=MUTED_TEXT if muted else TEXT)
        y += step

    heading("Channels")
    channel_rgb = {"red": (255, 60, 60), "green": (60, 230, 60), "blue": (80, 120, 255), "yellow": (240, 220, 40)}
    for colour, structure in CHANNEL_LEGEND:
        entry(f"{colour}: {structure}", channel_rgb[colour])
    y += step // 2
    heading("Top location per cell (count)")
    normal = view.cells[~view.flagged]
    counts = normal["top_label_id"].astype(int).value_counts()
    colours = class_colour_table()
    if counts.empty:
        entry("no cell without QC flags", None, muted=True)
    for class_id, count in counts.items():
        entry(f"{CLASS_NAMES[class_id]} ({count})", tuple(int(v) for v in colours[class_id]))
    y += step // 2
    heading("QC-flagged cells")
    flags = _flag_counts(view)
    if flags:
        entry(f"{int(view.flagged.sum())} cells, hatched, dashed outline", None, hatched=True)
        for name, count in sorted(flags.items(), key=lambda kv: -kv[1]):
            entry(f"{name}: {count}", None, muted=True)
    else:
        entry("none", None, muted=True)
    y += step // 2
    draw.text((x, y), "Cell labels: top location and", font=fonts.regular, fill=MUTED_TEXT)
    draw.text((x, y + step - 4), "its probability for that cell", font=fonts.regular, fill=MUTED_TEXT)
    return legend


def paint_overview(view: FieldView, style: MapStyle | None = None) -> np.ndarray:
    """`H,W,3` uint8 RGB at working size: the composite with every cell tinted and outlined by its top location,
    QC-flagged cells hatched with a dashed grey outline (the overview without text; also the gallery thumbnail)."""
    style = style or MapStyle()
    flagged = view.flagged
    top = view.cells["top_label_id"].to_numpy(dtype=np.int64)
    colour_of = view.cell_lookup(class_colour_table()[top].astype(np.float32))
    predicted_of = view.cell_lookup(np.ones(len(top), bool), fill=False)
    flagged_of = view.cell_lookup(flagged, fill=False)

    labels = view.cells_hw
    edge = inner_boundaries(labels)
    inside = labels > 0
    cell_flagged = flagged_of[labels] & inside
    cell_normal = predicted_of[labels] & inside & ~cell_flagged
    colour = colour_of[labels]
    alpha = np.where(cell_normal, np.float32(style.fill_alpha), np.float32(0.0))
    hatch = cell_flagged & stripes(labels.shape, 6)
    colour[hatch] = QC_GREY
    alpha[hatch] = 0.55
    alpha[edge & cell_normal] = 1.0
    flagged_edge = edge & cell_flagged & dashes(labels.shape, 3)
    colour[flagged_edge] = QC_GREY
    alpha[flagged_edge] = 1.0
    unpredicted_edge = edge & ~predicted_of[labels]
    colour[unpredicted_edge] = MUTED_TEXT
    alpha[unpredicted_edge] = 1.0
    return compose(composite_rgb(view.image_chw, style.composite), colour, alpha)


def render_overview(view: FieldView, style: MapStyle | None = None, painted: np.ndarray | None = None) -> np.ndarray:
    """`H',W',3` uint8 RGB overview of one image (see the module docstring); `painted`: `paint_overview`'s
    result when the caller already has it."""
    style = style or MapStyle()
    fonts = Fonts.load(style.font_px)
    scale = style.overview_scale
    height, width = view.cells_hw.shape
    flagged = view.flagged
    top = view.cells["top_label_id"].to_numpy(dtype=np.int64)
    colours = class_colour_table()
    painted = paint_overview(view, style) if painted is None else painted
    if painted.shape != (height, width, 3):
        raise ValueError(f"image {view.image_id}: painted overview {painted.shape} does not match the mask {height}x{width}")
    image = Image.fromarray(enlarged(painted, scale)).convert("RGBA")

    overlay = Image.new("RGBA", image.size, (0, 0, 0, 0))
    area = view.cells["area"].to_numpy() if "area" in view.cells.columns else np.ones(len(top))
    ys = view.cells["centroid_y"].to_numpy(dtype=np.float64) * scale + scale / 2
    xs = view.cells["centroid_x"].to_numpy(dtype=np.float64) * scale + scale / 2
    probs = view.cells["top_probability"].to_numpy(dtype=np.float64)
    label_specs = [(ys[i], xs[i], f"{SHORT_NAMES[top[i]]} {probs[i]:.2f}", tuple(int(v) for v in colours[top[i]]),
                    bool(flagged[i])) for i in np.argsort(-area, kind="stable")]
    place_labels(ImageDraw.Draw(overlay), label_specs, fonts.regular, (image.height, image.width))
    image = Image.alpha_composite(image, overlay).convert("RGB")

    body = Image.new("RGB", (image.width + style.legend_width, image.height), BACKGROUND)
    body.paste(image, (0, 0))
    body.paste(_overview_legend(view, image.height, style, fonts), (image.width, 0))
    n_flagged = int(flagged.sum())
    title = title_block(body.width, [
        (f"{view.image_id}", fonts.title, TEXT),
        (f"{len(view.cells)} cells ({n_flagged} QC-flagged); field {view.original_hw[0]}x{view.original_hw[1]} px, "
         f"shown at {width}x{height} x{scale}", fonts.regular, MUTED_TEXT),
        (_predicted_text(view), fonts.bold, TEXT),
    ])
    return np.asarray(stack(title, body))
