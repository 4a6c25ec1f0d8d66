"""Writing the maps: every file of one image (`write_image_maps`) and of a whole prediction folder with its
`maps_index.csv` (`write_maps`); PNGs as 256-colour palette images, each file written atomically. An image whose
pixels cannot be read (`FieldInputError`: a schema-1 cache whose input file is gone) does not stop the run: it gets
one `error` row in the index (kind `error`, the one-line message in the `error` column) and no files."""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from hpa_cells.atomic_files import atomic_output, write_text_atomic
from hpa_cells.classes import NUM_CLASSES
from hpa_cells.maps.exports import write_ome_maps, write_pixel_ome_map
from hpa_cells.maps.overview import paint_overview, render_overview
from hpa_cells.maps.panels import PanelCanvas, render_attention_panel, render_class_panel, render_pixel_panel
from hpa_cells.maps.prediction_run import FieldInputError, FieldView, PredictionRun
from hpa_cells.maps.style import MapStyle

logger = logging.getLogger(__name__)

MAPS_INDEX = "maps_index.csv"
MAPS_INDEX_COLUMNS = ("image_id", "kind", "class_id", "path", "error")
"""maps_index.csv: one row per file (`error` empty), and one row of kind `error` (`path` empty) per image whose
maps could not be drawn."""
THUMBNAIL_PX = 320


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
    with atomic_output(path) as partial:
        image.save(partial, format="PNG", compress_level=compression)
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


class WrittenMaps(list):
    """The `ImageMaps` of the images drawn (a list, in order) and `failures`: image id -> the one-line error of
    each image that could not be drawn."""

    def __init__(self, maps: Iterable[ImageMaps] = (), failures: dict[str, str] | None = None) -> None:
        super().__init__(maps)
        self.failures: dict[str, str] = dict(failures or {})


def write_maps(run: PredictionRun, maps_dir: Path, extra_classes: Sequence[int] = (), write_tiff: bool = True,
               style: MapStyle | None = None, image_ids: Sequence[str] | None = None,
               show_progress: bool = False) -> WrittenMaps:
    """Maps of every image of `run` (or of `image_ids`) into `maps_dir/{image_id}/`, plus `maps_index.csv`; an
    image whose pixels cannot be read is recorded (index row, `failures`, a logged warning) and skipped."""
    from tqdm import tqdm

    maps_dir = Path(maps_dir)
    maps_dir.mkdir(parents=True, exist_ok=True)
    wanted = list(image_ids) if image_ids is not None else run.image_ids
    written = WrittenMaps()
    for image_id in tqdm(wanted, desc="maps", unit="image", disable=not show_progress):
        try:
            view = run.field(image_id)
        except FieldInputError as err:
            written.failures[image_id] = str(err)
            logger.warning("maps of %s not drawn: %s", image_id, err)
            continue
        written.append(write_image_maps(view, maps_dir / image_id, extra_classes, write_tiff, style))
    index = io.StringIO(newline="")
    writer = csv.writer(index)
    writer.writerow(MAPS_INDEX_COLUMNS)
    for maps in written:
        for kind, class_id, path in maps.files():
            writer.writerow([maps.image_id, kind, "" if class_id is None else class_id,
                             Path(path).relative_to(maps_dir).as_posix(), ""])
    for image_id, error in written.failures.items():
        writer.writerow([image_id, "error", "", "", error])
    write_text_atomic(maps_dir / MAPS_INDEX, index.getvalue())
    logger.info("wrote maps of %d images into %s (%d could not be drawn)", len(written), maps_dir,
                len(written.failures))
    return written
