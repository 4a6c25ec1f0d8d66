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

and `{maps}/maps_index.csv` (image_id, kind, class_id, path relative to the maps folder, error) listing every file,
and one row of kind `error` (its one-line message in `error`) per image that could not be drawn.

The fields are drawn from the cache's stored pixels (`image_pixels`, schema 2: exactly what was segmented, at the
working size), so deleting or moving the input files after segmenting does not stop the maps; the files are not
read even when present. A schema-1 cache stores no pixels: its fields are read from the input files (at the
working size, as before), and an image whose file is missing gets an `error` row instead of stopping the run.

The label images are the working-size masks enlarged by nearest neighbour (`hpa_cells.images.resize_mask`), so
cell boundaries are as precise as the working size. Probabilities are stored as uint8 (resolution 1/255) to keep
28 planes of a 3072 px field at a few MB (zlib compressed, piecewise constant); divide by 255 to get them back.
The PNGs are 256-colour palette images (fast octree, dithered): about 5x smaller than RGB, no visible loss.

Modules: `prediction_run` (the prediction folder, read by `hpa_cells.predictions`, with its cache and images,
opened for drawing; errors are `hpa_cells.predictions.PredictionFolderError`), `style` (colours,
colour maps, `MapStyle`), `drawing` (primitives), `overview`, `panels` (class, pixel and attention panels),
`exports` (OME-TIFFs), `writer` (one image's files, a whole folder, the index). The class colours and short names
live with the classes (`hpa_cells.classes`).
"""

from __future__ import annotations

from hpa_cells.classes import CLASS_COLOURS, SHORT_NAMES, class_id_of
from hpa_cells.maps.drawing import inner_boundaries
from hpa_cells.maps.exports import (
    CELLS_TIFF,
    CELLS_TIFF_CHANNELS,
    PIXEL_PROBABILITIES_TIFF,
    PROBABILITIES_TIFF,
    original_size_pixel_planes,
    original_size_planes,
    write_ome_maps,
    write_pixel_ome_map,
)
from hpa_cells.maps.overview import paint_overview, render_overview
from hpa_cells.maps.panels import (
    PanelCanvas,
    PanelOverlay,
    render_attention_panel,
    render_class_panel,
    render_pixel_panel,
)
from hpa_cells.maps.prediction_run import FieldInputError, FieldView, PredictionRun
from hpa_cells.maps.style import (
    BACKGROUND,
    MUTED_TEXT,
    QC_GREY,
    TEXT,
    MapStyle,
    class_colour_table,
    colour_lut,
)
from hpa_cells.maps.writer import (
    MAPS_INDEX,
    MAPS_INDEX_COLUMNS,
    THUMBNAIL_PX,
    ImageMaps,
    WrittenMaps,
    panel_classes,
    save_png,
    thumbnail_of,
    write_image_maps,
    write_maps,
)
from hpa_cells.predictions import PredictionFolderError

__all__ = [
    "BACKGROUND", "CELLS_TIFF", "CELLS_TIFF_CHANNELS", "CLASS_COLOURS", "FieldInputError", "MAPS_INDEX", "MAPS_INDEX_COLUMNS",
    "MUTED_TEXT", "PIXEL_PROBABILITIES_TIFF", "PROBABILITIES_TIFF", "QC_GREY", "SHORT_NAMES",
    "TEXT", "THUMBNAIL_PX", "FieldView", "ImageMaps", "MapStyle", "PanelCanvas", "PanelOverlay",
    "PredictionFolderError", "PredictionRun", "class_colour_table", "class_id_of", "colour_lut", "inner_boundaries",
    "original_size_pixel_planes", "original_size_planes", "paint_overview", "panel_classes", "render_attention_panel",
    "render_class_panel", "render_overview", "render_pixel_panel", "save_png", "thumbnail_of", "write_image_maps",
    "write_maps", "write_ome_maps", "write_pixel_ome_map", "WrittenMaps",
]
