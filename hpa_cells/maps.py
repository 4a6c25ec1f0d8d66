"""Per-cell localization maps of a prediction folder: what a biologist opens to see where the protein sits.

For each image `write_maps` writes, into `{maps}/{image_id}/`:

| file | what |
|---|---|
| `thumbnail.png` | the overview's tinted composite without text, at most 320 px (for galleries) |
| `overview.png` | the colour composite (see `hpa_cells.composite`) at `overview_scale` x the working size; every cell tinted and outlined in the colour of its top predicted location, with a short label and that probability near its centroid; QC-flagged cells hatched with a dashed grey outline and a grey label; a title (image id, image-level predictions) and a legend (channels, locations present with cell counts, QC flags) |
| `class_{id:02d}.png` | one per class predicted for the image (the most probable class when none passes its threshold) and per requested class: the protein channel in grey with every cell painted by its probability for that class (colour map, fixed 0-1 range so panels compare across images), a colour bar marking the class threshold |
| `attention.png` | cells painted by their attention in the image-level pooling (0 to the image's largest attention); cells left out of the pooling hatched |
| `cells.ome.tif` | uint16 `CYX` at the original image size, channels `cells` (cell label image, ids = `cell_id` of cells.csv), `nuclei` (nucleus label image), `top_label` (top predicted class id + 1; 0 = background) |
| `probabilities.ome.tif` | uint8 `CYX` at the original image size, one plane per class named by the class: each cell's pixels hold round(255 x its probability), background 0 |
| `class_{id:02d}_pixels.png` | dense models only (the prediction folder has `pixel_probabilities.h5`), for the same classes as the class panels: the per-pixel probability map of the class inside each cell (same colour map and 0-1 range), showing where inside a cell the evidence sits |
| `pixel_probabilities.ome.tif` | dense models only: uint8 `CYX` at the original image size, one plane per class: each pixel's own probability (round(255 x p), bilinear from the model's resolution) inside cells, background 0 |

and `{maps}/maps_index.csv` (image_id, kind, class_id, path relative to the maps folder) listing every file.

The label images are the working-size masks enlarged by nearest neighbour (`hpa_cells.images.resize_mask`), so
cell boundaries are as precise as the working size. Probabilities are stored as uint8 (resolution 1/255) to keep
28 planes of a 3072 px field at a few MB (zlib compressed, piecewise constant); divide by 255 to get them back.
The PNGs are 256-colour palette images (fast octree, dithered): about 5x smaller than RGB, no visible loss.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import cv2
import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from hpa_cells.cache import CellCache
from hpa_cells.classes import CLASS_NAMES, NUM_CLASSES
from hpa_cells.composite import CHANNEL_LEGEND, CompositeSettings, composite_rgb, grey_channel
from hpa_cells.images import read_sample, resize_mask
from hpa_cells.pixel_maps import PIXEL_MAPS_FILE, PixelMaps, resize_planes

logger = logging.getLogger(__name__)

CLASS_COLOURS: tuple[str, ...] = (
    "#ff1eb4",  # 0 Nucleoplasm
    "#f0a5f0",  # 1 Nuclear membrane
    "#0069e1",  # 2 Nucleoli
    "#d2f096",  # 3 Nucleoli fibrillar center
    "#00c3ff",  # 4 Nuclear speckles
    "#d24b5a",  # 5 Nuclear bodies
    "#69783c",  # 6 Endoplasmic reticulum
    "#3c8700",  # 7 Golgi apparatus
    "#ffb400",  # 8 Peroxisomes
    "#b4c3ff",  # 9 Endosomes
    "#c34b1e",  # 10 Lysosomes
    "#e100ff",  # 11 Intermediate filaments
    "#69f0f0",  # 12 Actin filaments
    "#6969a5",  # 13 Focal adhesion sites
    "#009678",  # 14 Microtubules
    "#a5694b",  # 15 Microtubule ends
    "#b4b40f",  # 16 Cytokinetic bridge
    "#a5f00f",  # 17 Mitotic spindle
    "#a54bc3",  # 18 Microtubule organizing center
    "#ffb496",  # 19 Centrosome
    "#ffd278",  # 20 Lipid droplets
    "#b47800",  # 21 Plasma membrane
    "#78ff78",  # 22 Cell junctions
    "#00ffc3",  # 23 Mitochondria
    "#b44b87",  # 24 Aggresome
    "#ff7800",  # 25 Cytosol
    "#784bff",  # 26 Cytoplasmic bodies
    "#ff0078",  # 27 Rods & rings
)
"""Fixed colour of each class (by 2018 id) in every overview and legend. Chosen by greedy farthest-point
sampling in CIELAB (L 45-92, chroma > 30), kept away from grey (QC) and from the four channel colours; the
most distinct colours go to the classes most frequent in the 2018 training labels."""

SHORT_NAMES: tuple[str, ...] = (
    "Nucleopl.", "Nuc.membr.", "Nucleoli", "Nucl.FC", "Speckles", "Nuc.bodies", "ER", "Golgi",
    "Peroxis.", "Endosomes", "Lysosomes", "Int.fil.", "Actin", "Focal adh.", "Microtub.", "MT ends",
    "Cytok.br.", "Spindle", "MTOC", "Centrosome", "Lipid dr.", "Plasma m.", "Junctions", "Mitoch.",
    "Aggresome", "Cytosol", "Cyt.bodies", "Rods&rings",
)
"""At most 10 characters per class, for the labels drawn on cells."""

QC_GREY = (170, 170, 170)
BACKGROUND = (24, 24, 28)
TEXT = (235, 235, 235)
MUTED_TEXT = (165, 165, 170)
PROTEIN_CHANNEL = 1

CELLS_TIFF = "cells.ome.tif"
PROBABILITIES_TIFF = "probabilities.ome.tif"
PIXEL_PROBABILITIES_TIFF = "pixel_probabilities.ome.tif"
CELLS_TIFF_CHANNELS: tuple[str, ...] = ("cells", "nuclei", "top_label")
MAPS_INDEX = "maps_index.csv"
THUMBNAIL_PX = 320

IMAGE_COLUMNS: tuple[str, ...] = ("image_id", "predicted", *CLASS_NAMES)
CELL_COLUMNS: tuple[str, ...] = (
    "image_id", "cell_id", "centroid_y", "centroid_x", "qc_flags", "qc_flag_names", "used_for_image",
    *CLASS_NAMES, "top_label_id", "top_probability", "attention",
)


class PredictionFolderError(ValueError):
    """A prediction folder (or the cache and images it points to) that cannot be drawn; names the file."""


def _hex_rgb(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def class_id_of(text: str) -> int:
    """A class given as its id ("25") or its name, case-insensitive ("cytosol"); ValueError lists the choices."""
    stripped = text.strip()
    if stripped.isdigit() and 0 <= int(stripped) < NUM_CLASSES:
        return int(stripped)
    lowered = {name.lower(): i for i, name in enumerate(CLASS_NAMES)}
    if stripped.lower() in lowered:
        return lowered[stripped.lower()]
    raise ValueError(f"unknown class {text!r}: give an id 0-{NUM_CLASSES - 1} or one of {', '.join(CLASS_NAMES)}")


def class_colour_table() -> np.ndarray:
    """`28,3` uint8 RGB colour of each class."""
    return np.array([_hex_rgb(c) for c in CLASS_COLOURS], dtype=np.uint8)


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


# --------------------------------------------------------------------------------------------------
# Inputs: a prediction folder, its cache and its images
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldView:
    """Everything drawn for one image. image_chw `4,H,W` uint8 and the `H,W` uint16 label masks are at
    working size; `cells` holds the image's rows of cells.csv; image_probs and thresholds are `28`;
    pixel_probs (dense models) `28,H,W` uint8 = round(255 x per-pixel probability), 0 outside the cells."""

    image_id: str
    image_chw: np.ndarray
    cells_hw: np.ndarray
    nuclei_hw: np.ndarray
    original_hw: tuple[int, int]
    cells: pd.DataFrame
    image_probs: np.ndarray
    predicted: tuple[int, ...]
    thresholds: np.ndarray
    pixel_probs: np.ndarray | None = None

    def __post_init__(self) -> None:
        height, width = self.cells_hw.shape
        if self.pixel_probs is not None and self.pixel_probs.shape != (NUM_CLASSES, height, width):
            raise PredictionFolderError(
                f"image {self.image_id}: pixel map {self.pixel_probs.shape} does not match its cell mask {self.cells_hw.shape}"
            )
        if self.image_chw.shape != (4, height, width):
            raise PredictionFolderError(
                f"image {self.image_id}: field {self.image_chw.shape} does not match its cell mask {self.cells_hw.shape}"
            )
        if self.nuclei_hw.shape != self.cells_hw.shape:
            raise PredictionFolderError(f"image {self.image_id}: nucleus and cell masks differ in shape")
        missing = sorted(set(self.cells["cell_id"].astype(int)) - set(np.unique(self.cells_hw).tolist()))
        if missing:
            raise PredictionFolderError(
                f"image {self.image_id}: cells {missing[:10]} of cells.csv are not in the cache's cell mask "
                "(were the predictions made from another cache?)"
            )

    def cell_lookup(self, values: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """A table indexed by cell id (0..max id) holding `values` (one per row of `cells`), `fill` elsewhere."""
        ids = self.cells["cell_id"].to_numpy(dtype=np.int64)
        size = int(max(int(self.cells_hw.max()), int(ids.max(initial=0)))) + 1
        values = np.asarray(values)
        lookup = np.full((size, *values.shape[1:]), fill, dtype=values.dtype)
        lookup[ids] = values
        return lookup

    @property
    def flagged(self) -> np.ndarray:
        """`N` bool: cells with any QC flag."""
        return self.cells["qc_flags"].to_numpy(dtype=np.int64) != 0


def _read_table(path: Path, required: Sequence[str], dtypes: dict[str, type]) -> pd.DataFrame:
    if not path.is_file():
        raise PredictionFolderError(f"{path.parent} is not a prediction folder: {path.name} is missing")
    frame = pd.read_csv(path, dtype=dtypes, keep_default_na=False)
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise PredictionFolderError(f"{path}: missing columns {missing[:6]}")
    return frame


class PredictionRun:
    """A prediction folder opened for drawing: its tables, thresholds, cell cache and input images.

    `cache_path` / `images_dir` override the locations recorded in manifest.json and the cache (for a moved
    folder). A context manager: closes the cache handle.
    """

    def __init__(self, pred_dir: str | os.PathLike[str], cache_path: str | os.PathLike[str] | None = None,
                 images_dir: str | os.PathLike[str] | None = None) -> None:
        self.pred_dir = Path(pred_dir)
        manifest_path = self.pred_dir / "manifest.json"
        if not manifest_path.is_file():
            raise PredictionFolderError(f"{self.pred_dir} is not a prediction folder: manifest.json is missing")
        try:
            self.manifest: dict = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as error:
            raise PredictionFolderError(f"{manifest_path}: invalid JSON ({error})") from error
        self.images = _read_table(self.pred_dir / "images.csv", IMAGE_COLUMNS, {"image_id": str, "predicted": str})
        self.images["predicted_ids"] = [tuple(int(x) for x in s.split()) for s in self.images["predicted"]]
        self.cells = _read_table(self.pred_dir / "cells.csv", CELL_COLUMNS,
                                 {"image_id": str, "qc_flag_names": str})
        thresholds = np.asarray(self.manifest.get("thresholds", []), dtype=np.float64)
        if thresholds.shape != (NUM_CLASSES,):
            raise PredictionFolderError(f"{manifest_path}: 'thresholds' must list {NUM_CLASSES} values")
        self.thresholds = thresholds
        recorded_cache = self.manifest.get("cache")
        self.cache_path = Path(cache_path) if cache_path is not None else Path(recorded_cache or "")
        if not self.cache_path.is_file():
            raise PredictionFolderError(
                f"cell cache {self.cache_path} (from {manifest_path}) not found; pass the cache's new location"
            )
        self.cache = CellCache(self.cache_path)
        self.provenance = self.cache.provenance
        recorded_images = self.provenance["parameters"].get("images_dir")
        self.images_dir = Path(images_dir) if images_dir is not None else Path(recorded_images or "")
        if not self.images_dir.is_dir():
            raise PredictionFolderError(
                f"input images folder {self.images_dir} (recorded in {self.cache_path}) not found; "
                "pass the folder's new location"
            )
        table = self.cache.image_table().set_index("image_id")
        self._original_hw = {i: (int(r.original_h), int(r.original_w)) for i, r in table.iterrows()}
        self.cache_labels = {i: r.label_ids for i, r in table.iterrows() if r.has_labels}
        self._rows = {image_id: i for i, image_id in enumerate(self.images["image_id"])}
        self._cells_of = {image_id: rows for image_id, rows in self.cells.groupby("image_id", sort=False).indices.items()}
        pixel_maps_path = self.pred_dir / PIXEL_MAPS_FILE
        self.pixel_maps = PixelMaps(pixel_maps_path) if self.manifest.get("pixel_maps") and pixel_maps_path.is_file() \
            else None

    @property
    def image_ids(self) -> list[str]:
        return list(self.images["image_id"])

    def field(self, image_id: str) -> FieldView:
        """The image's field (read from the input folder at the working size), masks and predictions."""
        if image_id not in self._rows:
            raise KeyError(f"image {image_id!r} is not in {self.pred_dir / 'images.csv'}")
        cells_hw, nuclei_hw = self.cache.full_masks(image_id)
        image = read_sample(self.images_dir, image_id, size=tuple(cells_hw.shape))
        row = self.images.iloc[self._rows[image_id]]
        cells = self.cells.iloc[self._cells_of.get(image_id, [])].reset_index(drop=True)
        pixel_probs = None
        if self.pixel_maps is not None:
            inside = np.isin(cells_hw, cells["cell_id"].to_numpy())  # bilinear resizing must not bleed outside
            pixel_probs = self.pixel_maps.read(image_id, tuple(cells_hw.shape)) * inside
        return FieldView(
            image_id=image_id,
            image_chw=image,
            cells_hw=cells_hw,
            nuclei_hw=nuclei_hw,
            original_hw=self._original_hw[image_id],
            cells=cells,
            image_probs=row[list(CLASS_NAMES)].to_numpy(dtype=np.float64),
            predicted=row["predicted_ids"],
            thresholds=self.thresholds,
            pixel_probs=pixel_probs,
        )

    def close(self) -> None:
        self.cache.close()
        if self.pixel_maps is not None:
            self.pixel_maps.close()

    def __enter__(self) -> PredictionRun:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


# --------------------------------------------------------------------------------------------------
# Drawing primitives
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Fonts:
    regular: ImageFont.FreeTypeFont
    bold: ImageFont.FreeTypeFont
    title: ImageFont.FreeTypeFont

    @classmethod
    def load(cls, size: int) -> _Fonts:
        """DejaVu Sans as shipped with matplotlib (always installed with it, so maps look the same everywhere)."""
        import matplotlib

        folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
        return cls(ImageFont.truetype(str(folder / "DejaVuSans.ttf"), size),
                   ImageFont.truetype(str(folder / "DejaVuSans-Bold.ttf"), size),
                   ImageFont.truetype(str(folder / "DejaVuSans-Bold.ttf"), size + 3))


def colour_lut(name: str) -> np.ndarray:
    """`256,3` uint8 RGB lookup table of a matplotlib colour map."""
    import matplotlib

    return (matplotlib.colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3] * 255 + 0.5).astype(np.uint8)


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


def _stripes(shape_hw: tuple[int, int], period: int) -> np.ndarray:
    """`H,W` bool diagonal hatching, one stripe every `period` pixels."""
    diagonal = np.add.outer(np.arange(shape_hw[0]), np.arange(shape_hw[1]))
    return (diagonal % period) < max(1, period // 3)


def _dashes(shape_hw: tuple[int, int], length: int) -> np.ndarray:
    """`H,W` bool checkerboard of `length` px squares: an outline masked by it is dashed."""
    return (np.add.outer(np.arange(shape_hw[0]) // length, np.arange(shape_hw[1]) // length) % 2) == 0


def _compose(base_rgb: np.ndarray, colour_hw3: np.ndarray, alpha_hw: np.ndarray) -> np.ndarray:
    """`H,W,3` uint8: a paint layer (colour `H,W,3` float, alpha `H,W` in [0, 1]) blended over a uint8 base."""
    base = base_rgb.astype(np.float32)
    base += alpha_hw[:, :, None] * (colour_hw3 - base)
    base += 0.5
    return np.clip(base, 0, 255, out=base).astype(np.uint8)


def _enlarged(rgb_hwc: np.ndarray, scale: int) -> np.ndarray:
    """The image enlarged `scale` times by pixel repetition (drawn maps are painted at working size, then
    enlarged so labels and text can be drawn legibly on top)."""
    if scale == 1:
        return rgb_hwc
    height, width = rgb_hwc.shape[:2]
    return cv2.resize(rgb_hwc, (width * scale, height * scale), interpolation=cv2.INTER_NEAREST)


def _fit_text(text: str, font: ImageFont.FreeTypeFont, width: int) -> str:
    """`text`, shortened with an ellipsis to fit `width` px."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"


def _boxes_overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _place_labels(draw: ImageDraw.ImageDraw, labels: Sequence[tuple[float, float, str, tuple[int, int, int], bool]],
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


def _hatched_swatch(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int]) -> None:
    x0, y0, x1, y1 = box
    draw.rectangle(box, fill=(60, 60, 64), outline=QC_GREY)
    for offset in range(-(y1 - y0), x1 - x0, 4):
        draw.line([(x0 + max(offset, 0), y0 + max(-offset, 0)),
                   (x0 + min(offset + (y1 - y0), x1 - x0), y0 + min(y1 - y0, x1 - x0 - offset))], fill=QC_GREY)


def _title_block(width: int, lines: Sequence[tuple[str, ImageFont.FreeTypeFont, tuple[int, int, int]]]) -> Image.Image:
    """A dark band holding one text line per entry (each shortened to fit)."""
    heights = [int(font.size * 1.45) for _, font, _ in lines]
    band = Image.new("RGB", (width, sum(heights) + 10), BACKGROUND)
    draw = ImageDraw.Draw(band)
    y = 5
    for (text, font, colour), h in zip(lines, heights, strict=True):
        draw.text((8, y), _fit_text(text, font, width - 16), font=font, fill=colour)
        y += h
    return band


def _stack(top: Image.Image, body: Image.Image) -> Image.Image:
    out = Image.new("RGB", (max(top.width, body.width), top.height + body.height), BACKGROUND)
    out.paste(top, (0, 0))
    out.paste(body, (0, top.height))
    return out


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


# --------------------------------------------------------------------------------------------------
# Overview
# --------------------------------------------------------------------------------------------------


def _overview_legend(view: FieldView, height: int, style: MapStyle, fonts: _Fonts) -> Image.Image:
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
            _hatched_swatch(draw, box)
        elif colour is not None:
            draw.rectangle(box, fill=colour)
        draw.text((x + swatch + 8, y), _fit_text(text, fonts.regular, style.legend_width - swatch - 30),
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
    hatch = cell_flagged & _stripes(labels.shape, 6)
    colour[hatch] = QC_GREY
    alpha[hatch] = 0.55
    alpha[edge & cell_normal] = 1.0
    flagged_edge = edge & cell_flagged & _dashes(labels.shape, 3)
    colour[flagged_edge] = QC_GREY
    alpha[flagged_edge] = 1.0
    unpredicted_edge = edge & ~predicted_of[labels]
    colour[unpredicted_edge] = MUTED_TEXT
    alpha[unpredicted_edge] = 1.0
    return _compose(composite_rgb(view.image_chw, style.composite), colour, alpha)


def render_overview(view: FieldView, style: MapStyle | None = None, painted: np.ndarray | None = None) -> np.ndarray:
    """`H',W',3` uint8 RGB overview of one image (see the module docstring); `painted`: `paint_overview`'s
    result when the caller already has it."""
    style = style or MapStyle()
    fonts = _Fonts.load(style.font_px)
    scale = style.overview_scale
    height, width = view.cells_hw.shape
    flagged = view.flagged
    top = view.cells["top_label_id"].to_numpy(dtype=np.int64)
    colours = class_colour_table()
    painted = paint_overview(view, style) if painted is None else painted
    if painted.shape != (height, width, 3):
        raise ValueError(f"image {view.image_id}: painted overview {painted.shape} does not match the mask {height}x{width}")
    image = Image.fromarray(_enlarged(painted, scale)).convert("RGBA")

    overlay = Image.new("RGBA", image.size, (0, 0, 0, 0))
    area = view.cells["area"].to_numpy() if "area" in view.cells.columns else np.ones(len(top))
    ys = view.cells["centroid_y"].to_numpy(dtype=np.float64) * scale + scale / 2
    xs = view.cells["centroid_x"].to_numpy(dtype=np.float64) * scale + scale / 2
    probs = view.cells["top_probability"].to_numpy(dtype=np.float64)
    label_specs = [(ys[i], xs[i], f"{SHORT_NAMES[top[i]]} {probs[i]:.2f}", tuple(int(v) for v in colours[top[i]]),
                    bool(flagged[i])) for i in np.argsort(-area, kind="stable")]
    _place_labels(ImageDraw.Draw(overlay), label_specs, fonts.regular, (image.height, image.width))
    image = Image.alpha_composite(image, overlay).convert("RGB")

    body = Image.new("RGB", (image.width + style.legend_width, image.height), BACKGROUND)
    body.paste(image, (0, 0))
    body.paste(_overview_legend(view, image.height, style, fonts), (image.width, 0))
    n_flagged = int(flagged.sum())
    title = _title_block(body.width, [
        (f"{view.image_id}", fonts.title, TEXT),
        (f"{len(view.cells)} cells ({n_flagged} QC-flagged); field {view.original_hw[0]}x{view.original_hw[1]} px, "
         f"shown at {width}x{height} x{scale}", fonts.regular, MUTED_TEXT),
        (_predicted_text(view), fonts.bold, TEXT),
    ])
    return np.asarray(_stack(title, body))


# --------------------------------------------------------------------------------------------------
# Per-class and attention panels
# --------------------------------------------------------------------------------------------------


def _colour_bar(height: int, lut: np.ndarray, vmin: float, vmax: float, ticks: Sequence[float],
                marker: float | None, fonts: _Fonts, caption: str) -> Image.Image:
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
    ImageDraw.Draw(text).text((0, 0), _fit_text(caption, fonts.regular, text.width), font=fonts.regular, fill=MUTED_TEXT)
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
        layers = ((hatched_px & _stripes(labels.shape, 6), QC_GREY, 0.5), (edge, (235, 235, 235), 0.55),
                  (edge & hatched_px & _dashes(labels.shape, 3), QC_GREY, 1.0))
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
        grey = (grey_channel(view.image_chw, PROTEIN_CHANNEL, style.composite) * 0.85).astype(np.uint8)
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
    return _enlarged(out, style.panel_scale)


def render_class_panel(view: FieldView, class_id: int, style: MapStyle | None = None,
                       canvas: PanelCanvas | None = None) -> np.ndarray:
    """`H',W',3` uint8 RGB: cells painted by their probability for `class_id` (0-1), with a colour bar.
    `canvas`: the image's shared `PanelCanvas` when drawing several panels."""
    style = style or MapStyle()
    canvas = canvas or PanelCanvas.of(view, style)
    if not 0 <= class_id < NUM_CLASSES:
        raise ValueError(f"class id {class_id} out of range 0-{NUM_CLASSES - 1}")
    fonts = _Fonts.load(style.font_px)
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
    title = _title_block(body.width, [
        (f"{name} ({class_id})", fonts.title, TEXT),
        (f"image p = {view.image_probs[class_id]:.2f}, threshold {threshold:.2f}: {status}", fonts.regular, TEXT),
        (f"cells at/above threshold: {above}/{len(probs)}; median cell p = {np.median(probs):.2f}; "
         "hatched = QC-flagged", fonts.regular, MUTED_TEXT),
    ])
    return np.asarray(_stack(title, body))


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
    fonts = _Fonts.load(style.font_px)
    lut = colour_lut(style.probability_cmap)
    plane = view.pixel_probs[class_id]
    painted = np.ascontiguousarray(lut[plane])
    out = cv2.blendLinear(canvas.base, painted, canvas.base_weight, canvas.paint_weight)
    out = cv2.blendLinear(out, canvas.flagged.colour, canvas.flagged.keep, canvas.flagged.weight)
    image = Image.fromarray(_enlarged(out, style.panel_scale))
    threshold = float(view.thresholds[class_id])
    bar = _colour_bar(image.height, lut, 0.0, 1.0, (0, 0.25, 0.5, 0.75, 1.0), threshold, fonts, "pixel probability")
    body = Image.new("RGB", (image.width + bar.width, image.height), BACKGROUND)
    body.paste(image, (0, 0))
    body.paste(bar, (image.width, 0))
    inside = plane[view.cells_hw > 0]
    peak = float(inside.max()) / 255 if inside.size else 0.0
    title = _title_block(body.width, [
        (f"{CLASS_NAMES[class_id]} ({class_id}): pixel map", fonts.title, TEXT),
        (f"each pixel's own probability inside its cell (dense model); image p = {view.image_probs[class_id]:.2f}",
         fonts.regular, TEXT),
        (f"highest pixel p = {peak:.2f}; hatched = QC-flagged", fonts.regular, MUTED_TEXT),
    ])
    return np.asarray(_stack(title, body))


def render_attention_panel(view: FieldView, style: MapStyle | None = None,
                           canvas: PanelCanvas | None = None) -> np.ndarray:
    """`H',W',3` uint8 RGB: cells painted by attention (0 to the image's largest), pooled-out cells hatched."""
    style = style or MapStyle()
    canvas = canvas or PanelCanvas.of(view, style)
    fonts = _Fonts.load(style.font_px)
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
    title = _title_block(body.width, [
        ("Attention", fonts.title, TEXT),
        (f"each cell's weight in the image-level pooling ({int(used.sum())} pooled cells; uniform = {uniform:.3f})",
         fonts.regular, TEXT),
        (f"hatched = left out of the pooling (QC-flagged): {int((~used).sum())} cells", fonts.regular, MUTED_TEXT),
    ])
    return np.asarray(_stack(title, body))


# --------------------------------------------------------------------------------------------------
# Machine-readable maps (OME-TIFF)
# --------------------------------------------------------------------------------------------------


def original_size_planes(view: FieldView) -> tuple[np.ndarray, np.ndarray]:
    """(labels `3,H0,W0` uint16: cells, nuclei, top_label; probabilities `28,H0,W0` uint8 = round(255 p)) at the
    original image size."""
    size = view.original_hw
    cells = resize_mask(view.cells_hw, size)
    nuclei = resize_mask(view.nuclei_hw, size)
    top = view.cell_lookup(view.cells["top_label_id"].to_numpy(dtype=np.uint16) + 1, fill=0).astype(np.uint16)
    labels = np.stack([cells, nuclei, top[cells]])
    probs = view.cells[list(CLASS_NAMES)].to_numpy(dtype=np.float64)
    scaled = np.clip(np.round(probs * 255.0), 0, 255).astype(np.uint8)
    per_class = np.ascontiguousarray(view.cell_lookup(scaled, fill=0).T)  # 28, max id + 1
    return labels, np.take(per_class, cells, axis=1)


def original_size_pixel_planes(view: FieldView) -> np.ndarray:
    """`28,H0,W0` uint8: a dense model's pixel map at the original image size (bilinear), 0 outside the cells."""
    if view.pixel_probs is None:
        raise PredictionFolderError(f"image {view.image_id}: no pixel map (pixel maps need a dense model)")
    cells = resize_mask(view.cells_hw, view.original_hw)
    return resize_planes(view.pixel_probs, view.original_hw) * (cells > 0)


def write_pixel_ome_map(view: FieldView, out_dir: Path) -> Path:
    """Write `pixel_probabilities.ome.tif` (see the module docstring) into `out_dir`."""
    import tifffile

    path = out_dir / PIXEL_PROBABILITIES_TIFF
    tifffile.imwrite(path, original_size_pixel_planes(view), ome=True, photometric="minisblack", compression="zlib",
                     metadata={"axes": "CYX", "Channel": {"Name": list(CLASS_NAMES)}})
    return path


def write_ome_maps(view: FieldView, out_dir: Path) -> tuple[Path, Path]:
    """Write `cells.ome.tif` and `probabilities.ome.tif` (see the module docstring) into `out_dir`."""
    import tifffile

    labels, probs = original_size_planes(view)
    cells_path = out_dir / CELLS_TIFF
    probs_path = out_dir / PROBABILITIES_TIFF
    tifffile.imwrite(cells_path, labels, ome=True, photometric="minisblack", compression="zlib",
                     metadata={"axes": "CYX", "Channel": {"Name": list(CELLS_TIFF_CHANNELS)}})
    tifffile.imwrite(probs_path, probs, ome=True, photometric="minisblack", compression="zlib",
                     metadata={"axes": "CYX", "Channel": {"Name": list(CLASS_NAMES)}})
    return cells_path, probs_path


# --------------------------------------------------------------------------------------------------
# One image, a whole folder
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageMaps:
    """The files written for one image (absolute or relative to the working directory, as given)."""

    image_id: str
    overview: Path
    thumbnail: Path
    class_panels: dict[int, Path]
    attention: Path
    cells_tiff: Path | None
    probabilities_tiff: Path | None
    pixel_panels: dict[int, Path] = field(default_factory=dict)
    pixel_probabilities_tiff: Path | None = None

    def files(self) -> list[tuple[str, int | None, Path]]:
        """(kind, class id or None, path) of every file."""
        out: list[tuple[str, int | None, Path]] = [("overview", None, self.overview), ("thumbnail", None, self.thumbnail)]
        out += [("class_panel", c, p) for c, p in self.class_panels.items()]
        out.append(("attention", None, self.attention))
        if self.cells_tiff is not None:
            out.append(("cells_tiff", None, self.cells_tiff))
        if self.probabilities_tiff is not None:
            out.append(("probabilities_tiff", None, self.probabilities_tiff))
        out += [("pixel_panel", c, p) for c, p in self.pixel_panels.items()]
        if self.pixel_probabilities_tiff is not None:
            out.append(("pixel_probabilities_tiff", None, self.pixel_probabilities_tiff))
        return out


def panel_classes(view: FieldView, extra_classes: Iterable[int] = ()) -> list[int]:
    """Classes to draw a panel for: the image's predicted classes (the most probable one when none is),
    then `extra_classes`, without repeats."""
    chosen = list(view.predicted) or [int(np.argmax(view.image_probs))]
    for class_id in extra_classes:
        if not 0 <= int(class_id) < NUM_CLASSES:
            raise ValueError(f"class id {class_id} out of range 0-{NUM_CLASSES - 1}")
        if int(class_id) not in chosen:
            chosen.append(int(class_id))
    return chosen


def thumbnail_of(rgb_hwc: np.ndarray, longest: int = THUMBNAIL_PX) -> np.ndarray:
    """The image shrunk (area interpolation) so its longer side is at most `longest` px."""
    height, width = rgb_hwc.shape[:2]
    factor = longest / max(height, width)
    if factor >= 1:
        return rgb_hwc
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return cv2.resize(rgb_hwc, size, interpolation=cv2.INTER_AREA)


def save_png(path: Path, rgb_hwc: np.ndarray, palette: bool = True, compression: int = 6) -> Path:
    """Write an `H,W,3` uint8 RGB array as PNG. `palette`: reduce to 256 colours (fast octree, Floyd-Steinberg
    dithered), which makes map files about 5x smaller at no visible cost; otherwise full RGB."""
    if rgb_hwc.ndim != 3 or rgb_hwc.shape[2] != 3 or rgb_hwc.dtype != np.uint8:
        raise ValueError(f"{path}: expected an H,W,3 uint8 RGB array, got {rgb_hwc.shape} {rgb_hwc.dtype}")
    image = Image.fromarray(np.ascontiguousarray(rgb_hwc))
    if palette:
        image = image.quantize(256, method=Image.Quantize.FASTOCTREE)
    image.save(path, format="PNG", compress_level=compression)
    return path


def write_image_maps(view: FieldView, out_dir: Path, extra_classes: Iterable[int] = (), write_tiff: bool = True,
                     style: MapStyle | None = None) -> ImageMaps:
    """Write one image's overview, class panels, attention panel and (optionally) OME-TIFFs into `out_dir`; for a
    dense model also the pixel panels and the pixel-map OME-TIFF."""
    style = style or MapStyle()
    out_dir.mkdir(parents=True, exist_ok=True)
    painted = paint_overview(view, style)
    overview = save_png(out_dir / "overview.png", render_overview(view, style, painted), style.palette_png,
                        style.png_compression)
    thumbnail = save_png(out_dir / "thumbnail.png", thumbnail_of(painted), style.palette_png, style.png_compression)
    canvas = PanelCanvas.of(view, style)
    classes = panel_classes(view, extra_classes)
    panels = {c: save_png(out_dir / f"class_{c:02d}.png", render_class_panel(view, c, style, canvas),
                                                         style.palette_png, style.png_compression)
              for c in classes}
    pixel_panels = {} if view.pixel_probs is None else {
        c: save_png(out_dir / f"class_{c:02d}_pixels.png", render_pixel_panel(view, c, style, canvas),
                    style.palette_png, style.png_compression) for c in classes}
    attention = save_png(out_dir / "attention.png", render_attention_panel(view, style, canvas), style.palette_png,
                         style.png_compression)
    cells_tiff = probs_tiff = pixel_tiff = None
    if write_tiff:
        cells_tiff, probs_tiff = write_ome_maps(view, out_dir)
        if view.pixel_probs is not None:
            pixel_tiff = write_pixel_ome_map(view, out_dir)
    return ImageMaps(view.image_id, overview, thumbnail, panels, attention, cells_tiff, probs_tiff, pixel_panels,
                     pixel_tiff)


def write_maps(run: PredictionRun, maps_dir: Path, extra_classes: Sequence[int] = (), write_tiff: bool = True,
               style: MapStyle | None = None, image_ids: Sequence[str] | None = None,
               show_progress: bool = False) -> list[ImageMaps]:
    """Maps of every image of `run` (or of `image_ids`) into `maps_dir/{image_id}/`, plus `maps_index.csv`."""
    from tqdm import tqdm

    maps_dir = Path(maps_dir)
    maps_dir.mkdir(parents=True, exist_ok=True)
    wanted = list(image_ids) if image_ids is not None else run.image_ids
    written: list[ImageMaps] = []
    for image_id in tqdm(wanted, desc="maps", unit="image", disable=not show_progress):
        written.append(write_image_maps(run.field(image_id), maps_dir / image_id, extra_classes, write_tiff, style))
    with open(maps_dir / MAPS_INDEX, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_id", "kind", "class_id", "path"])
        for maps in written:
            for kind, class_id, path in maps.files():
                writer.writerow([maps.image_id, kind, "" if class_id is None else class_id,
                                 Path(path).relative_to(maps_dir).as_posix()])
    logger.info("wrote maps of %d images into %s", len(written), maps_dir)
    return written
