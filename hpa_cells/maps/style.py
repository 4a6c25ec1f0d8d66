"""How maps look: the colours of text, background and QC-flagged cells, each class's RGB colour, matplotlib
colour maps as lookup tables, and `MapStyle` (scales, transparencies, font size, colour maps)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hpa_cells.classes import CLASS_COLOURS
from hpa_cells.composite import CompositeSettings

QC_GREY = (170, 170, 170)
BACKGROUND = (24, 24, 28)
TEXT = (235, 235, 235)
MUTED_TEXT = (165, 165, 170)


def _hex_rgb(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def class_colour_table() -> np.ndarray:
    """`28,3` uint8 RGB colour of each class."""
    return np.array([_hex_rgb(c) for c in CLASS_COLOURS], dtype=np.uint8)


def colour_lut(name: str) -> np.ndarray:
    """`256,3` uint8 RGB lookup table of a matplotlib colour map."""
    import matplotlib

    return (matplotlib.colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3] * 255 + 0.5).astype(np.uint8)


@dataclass(frozen=True)
class MapStyle:
    """How maps look: scales (overview x2 keeps labels legible), transparencies, font size, colour maps."""

    overview_scale: int = 2
    panel_scale: int = 1
    fill_alpha: float = 0.28
    panel_alpha: float = 0.62
    font_px: int = 12
    legend_width: int = 300
    probability_cmap: str = "viridis"
    attention_cmap: str = "magma"
    composite: CompositeSettings = field(default_factory=CompositeSettings)
    palette_png: bool = True
    png_compression: int = 3

    def __post_init__(self) -> None:
        if self.overview_scale < 1 or self.panel_scale < 1:
            raise ValueError(f"scales must be >= 1, got {self.overview_scale}, {self.panel_scale}")
        if not (0 <= self.fill_alpha <= 1 and 0 <= self.panel_alpha <= 1):
            raise ValueError(f"alphas must lie in [0, 1], got {self.fill_alpha}, {self.panel_alpha}")
