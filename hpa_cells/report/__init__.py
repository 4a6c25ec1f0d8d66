"""A static, self-contained HTML report of a prediction folder: open `index.html` from disk, no server, no internet.

```
report/
  index.html              run summary, per-class table, cells-per-image histogram, PR curves, gallery
  images/{image_id}.html  one page per image: overview, class and attention panels, image-level table, cell table
  figures/*.png           cells_per_image.png, pr_curves.png (when per-cell truth is given)
  maps/{image_id}/*.png   the image maps (copied from the maps folder unless drawn here)
```

Every link is relative and every style is inline; there is no script. Image-level F1 needs image labels (a
labels CSV, else the labels stored in the cell cache); cell-level PR curves need per-cell truth (a synthetic
folder: cells.csv with `image_id,cell_id,labels` and `{image_id}_cells.png` masks): predicted cells matched to
true cells at IoU >= 0.6, unmatched true cells counted as misses. Every score is
`hpa_cells.scoring.score_prediction_folder`'s, so the report shows exactly what `evaluate.py` prints (the cell
mAP over the labelled images that have per-cell truth).

Modules: `figures` (matplotlib), `pages` (what each page shows, rendered from the Jinja2 templates in
`templates/` with autoescaping), `writer` (the scores and the folder).
"""

from __future__ import annotations

from hpa_cells.metrics import TruthFolderError
from hpa_cells.report.figures import cells_per_image_figure, pr_curves_figure
from hpa_cells.report.pages import ReportFiles
from hpa_cells.report.writer import MapsAndReport, labels_for, place_maps, write_maps_and_report, write_report

__all__ = [
    "MapsAndReport", "ReportFiles", "TruthFolderError", "cells_per_image_figure", "labels_for", "place_maps",
    "pr_curves_figure", "write_maps_and_report", "write_report",
]
