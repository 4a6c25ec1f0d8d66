"""Drawing primitives shared by the overview and the panels: fonts, cell outlines, hatching and dashes,
blending, enlarging, text fitted to a width, cell labels placed without overlap, title bands."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from hpa_cells.maps.style import BACKGROUND, MUTED_TEXT, QC_GREY, TEXT


@dataclass(frozen=True)
class Fonts:
    regular: ImageFont.FreeTypeFont
    bold: ImageFont.FreeTypeFont
    title: ImageFont.FreeTypeFont

    @classmethod
    def load(cls, size: int) -> Fonts:
        """DejaVu Sans as shipped with matplotlib (always installed with it, so maps look the same everywhere)."""
        import matplotlib

        folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
        return cls(ImageFont.truetype(str(folder / "DejaVuSans.ttf"), size),
                   ImageFont.truetype(str(folder / "DejaVuSans-Bold.ttf"), size),
                   ImageFont.truetype(str(folder / "DejaVuSans-Bold.ttf"), size + 3))


def inner_boundaries(labels_hw: np.ndarray) -> np.ndarray:
    """`H,W` bool: labelled pixels with a 4-neighbour of another label (the cell's own outline)."""
    edge = np.zeros(labels_hw.shape, dtype=bool)
    vertical = labels_hw[1:, :] != labels_hw[:-1, :]
    horizontal = labels_hw[:, 1:] != labels_hw[:, :-1]
    edge[1:, :] |= vertical
    edge[:-1, :] |= vertical
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    return edge & (labels_hw > 0)


def stripes(shape_hw: tuple[int, int], period: int) -> np.ndarray:
    """`H,W` bool diagonal hatching, one stripe every `period` pixels."""
    diagonal = np.add.outer(np.arange(shape_hw[0]), np.arange(shape_hw[1]))
    return (diagonal % period) < max(1, period // 3)


def dashes(shape_hw: tuple[int, int], length: int) -> np.ndarray:
    """`H,W` bool checkerboard of `length` px squares: an outline masked by it is dashed."""
    return (np.add.outer(np.arange(shape_hw[0]) // length, np.arange(shape_hw[1]) // length) % 2) == 0


def compose(base_rgb: np.ndarray, colour_hw3: np.ndarray, alpha_hw: np.ndarray) -> np.ndarray:
    """`H,W,3` uint8: a paint layer (colour `H,W,3` float, alpha `H,W` in [0, 1]) blended over a uint8 base."""
    base = base_rgb.astype(np.float32)
    base += alpha_hw[:, :, None] * (colour_hw3 - base)
    base += 0.5
    return np.clip(base, 0, 255, out=base).astype(np.uint8)


def enlarged(rgb_hwc: np.ndarray, scale: int) -> np.ndarray:
    """The image enlarged `scale` times by pixel repetition (drawn maps are painted at working size, then
    enlarged so labels and text can be drawn legibly on top)."""
    if scale == 1:
        return rgb_hwc
    height, width = rgb_hwc.shape[:2]
    return cv2.resize(rgb_hwc, (width * scale, height * scale), interpolation=cv2.INTER_NEAREST)


def fit_text(text: str, font: ImageFont.FreeTypeFont, width: int) -> str:
    """`text`, shortened with an ellipsis to fit `width` px."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"


def _boxes_overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def place_labels(draw: ImageDraw.ImageDraw, labels: Sequence[tuple[float, float, str, tuple[int, int, int], bool]],
                  font: ImageFont.FreeTypeFont, size_hw: tuple[int, int]) -> None:
    """Draw each (y, x, text, colour, flagged) as text in a dark box with a coloured border near (y, x); a box
    that would cover an earlier one is moved up or down by a line where that frees it."""
    height, width = size_hw
    line = int(font.size * 1.35)
    placed: list[tuple[int, int, int, int]] = []
    for y, x, text, colour, flagged in labels:
        text_w = int(font.getlength(text)) + 8
        x0 = int(np.clip(x - text_w / 2, 1, max(1, width - text_w - 1)))
        chosen = None
        for shift in (0, line, -line, 2 * line, -2 * line):
            y0 = int(np.clip(y - line / 2 + shift, 1, max(1, height - line - 1)))
            box = (x0, y0, x0 + text_w, y0 + line)
            if not any(_boxes_overlap(box, other) for other in placed):
                chosen = box
                break
        if chosen is None:
            y0 = int(np.clip(y - line / 2, 1, max(1, height - line - 1)))
            chosen = (x0, y0, x0 + text_w, y0 + line)
        placed.append(chosen)
        border = QC_GREY if flagged else colour
        draw.rectangle(chosen, fill=(0, 0, 0, 185), outline=(*border, 255), width=1)
        draw.text((chosen[0] + 4, chosen[1] + (line - font.size) // 2 - 1), text, font=font,
                  fill=(*(MUTED_TEXT if flagged else TEXT), 255))


def hatched_swatch(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int]) -> None:
    x0, y0, x1, y1 = box
    draw.rectangle(box, fill=(60, 60, 64), outline=QC_GREY)
    for offset in range(-(y1 - y0), x1 - x0, 4):
        draw.line([(x0 + max(offset, 0), y0 + max(-offset, 0)),
                   (x0 + min(offset + (y1 - y0), x1 - x0), y0 + min(y1 - y0, x1 - x0 - offset))], fill=QC_GREY)


def title_block(width: int, lines: Sequence[tuple[str, ImageFont.FreeTypeFont, tuple[int, int, int]]]) -> Image.Image:
    """A dark band holding one text line per entry (each shortened to fit)."""
    heights = [int(font.size * 1.45) for _, font, _ in lines]
    band = Image.new("RGB", (width, sum(heights) + 10), BACKGROUND)
    draw = ImageDraw.Draw(band)
    y = 5
    for (text, font, colour), h in zip(lines, heights, strict=True):
        draw.text((8, y), fit_text(text, font, width - 16), font=font, fill=colour)
        y += h
    return band


def stack(top: Image.Image, body: Image.Image) -> Image.Image:
    out = Image.new("RGB", (max(top.width, body.width), top.height + body.height), BACKGROUND)
    out.paste(top, (0, 0))
    out.paste(body, (0, top.height))
    return out
