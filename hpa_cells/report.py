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
folder: cells.csv with `image_id,cell_id,labels` and `{image_id}_cells.png` masks), scored as in
`hpa_cells.metrics.cell_level_map`: predicted cells matched to true cells at IoU >= 0.6, unmatched true cells
counted as misses.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import numpy as np

from hpa_cells.classes import CLASS_NAMES, NUM_CLASSES
from hpa_cells.labels import read_labels, to_multi_hot
from hpa_cells.maps import CLASS_COLOURS, SHORT_NAMES, ImageMaps, PredictionRun
from hpa_cells.metrics import (  # noqa: F401  (TruthFolderError is part of this module's interface)
    CELL_MATCH_IOU,
    TruthFolderError,
    average_precision_with_misses,
    match_cells_to_truth,
    per_class_f1,
    read_cell_truth,
    read_true_cell_mask,
)

logger = logging.getLogger(__name__)

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f6f6f8;color:#1d1d22}
main{max-width:1240px;margin:0 auto;padding:18px 24px 60px}
h1{font-size:1.5em;margin:.3em 0}h2{font-size:1.2em;margin:1.6em 0 .5em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;font-size:.86em;background:#fff}
th,td{border:1px solid #e0e0e4;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#eef0f4;position:sticky;top:0}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.sw{display:inline-block;width:.9em;height:.9em;border-radius:2px;vertical-align:-.1em;margin-right:.35em;border:1px solid #0003}
.muted{color:#777}.small{font-size:.85em}
.summary td:first-child{font-weight:600;white-space:nowrap}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:14px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px;font-size:.85em}
.card img{width:100%;height:auto;display:block;border-radius:3px}
.card a{color:inherit;text-decoration:none}.card .id{word-break:break-all;margin-top:4px}
.chip{display:inline-block;padding:0 5px;margin:2px 2px 0 0;border-radius:3px;font-size:.9em}
.panels{display:grid;grid-template-columns:repeat(auto-fill,minmax(330px,1fr));gap:12px}
.panels img,.overview img{width:100%;height:auto;display:block}
.overview{max-width:1324px}
nav{font-size:.9em;margin-bottom:.6em}nav a{margin-right:1.2em}
tr.flagged td{background:#f4f4f4;color:#666}
code{font-size:.92em}
"""


# --------------------------------------------------------------------------------------------------
# Scores
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassCurve:
    """Cell-level precision-recall curve of one class (points by decreasing score) and its AP."""

    precision: np.ndarray
    recall: np.ndarray
    average_precision: float
    n_positives: int


@dataclass(frozen=True)
class CellCurves:
    """Per-class curves (classes some true cell carries) and the matching totals."""

    curves: dict[int, ClassCurve]
    n_true_cells: int
    n_matched_cells: int
    n_pred_cells: int

    @property
    def mean_ap(self) -> float:
        values = [c.average_precision for c in self.curves.values()]
        return float(np.mean(values)) if values else float("nan")


def cell_curves(run: PredictionRun, truth_dir: Path, iou_threshold: float = CELL_MATCH_IOU) -> CellCurves:
    """Cell-level PR curves of every image of `run` that has per-cell truth in `truth_dir`."""
    truth = read_cell_truth(truth_dir)
    true_masks, pred_masks, probs = {}, {}, {}
    for image_id in run.image_ids:
        if image_id not in truth:
            continue
        pred_masks[image_id], _ = run.cache.full_masks(image_id)
        true_masks[image_id] = read_true_cell_mask(truth_dir, image_id, pred_masks[image_id].shape)
        cells = run.cells[run.cells["image_id"] == image_id]
        rows = cells[list(CLASS_NAMES)].to_numpy(dtype=np.float64)
        probs[image_id] = dict(zip(cells["cell_id"].astype(int), rows, strict=True))
    matched = match_cells_to_truth(true_masks, truth, pred_masks, probs, NUM_CLASSES, iou_threshold)
    curves: dict[int, ClassCurve] = {}
    for c in np.flatnonzero(matched.positives):
        order = np.argsort(-matched.scores[:, c], kind="stable")
        tp = np.cumsum(matched.hits[order, c])
        precision = tp / np.arange(1, len(order) + 1)
        recall = tp / matched.positives[c]
        ap = average_precision_with_misses(matched.scores[:, c], matched.hits[:, c], int(matched.positives[c]))
        curves[int(c)] = ClassCurve(precision, recall, ap, int(matched.positives[c]))
    return CellCurves(curves, matched.n_true_cells, matched.n_matched_cells, matched.n_pred_cells)


@dataclass(frozen=True)
class ImageScores:
    """Image-level F1 per class (NaN where a class is absent from truth and predictions) on labelled images."""

    f1: np.ndarray
    n_labelled: np.ndarray
    n_images: int
    source: str

    @property
    def macro_f1(self) -> float:
        present = self.n_labelled > 0
        return float(np.nanmean(self.f1[present])) if present.any() else float("nan")


def image_scores(run: PredictionRun, labels: Mapping[str, Sequence[int]], source: str) -> ImageScores | None:
    """F1 of the run's thresholded predictions against `labels` on the images that have labels (None if none)."""
    scored = run.images[run.images["image_id"].isin(list(labels))]
    if scored.empty:
        return None
    y_true = to_multi_hot([labels[i] for i in scored["image_id"]])
    y_pred = to_multi_hot(scored["predicted_ids"])
    return ImageScores(per_class_f1(y_true, y_pred), y_true.sum(axis=0), len(scored), source)


# --------------------------------------------------------------------------------------------------
# Figures (matplotlib's object API: no pyplot, no global backend switch)
# --------------------------------------------------------------------------------------------------


def _save_figure(figure: object, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=100)
    return path


def cells_per_image_figure(run: PredictionRun, path: Path) -> Path:
    """Histogram of cells per image (all cells and cells pooled for the image prediction)."""
    from matplotlib.figure import Figure

    counts = run.cells.groupby("image_id").size().reindex(run.image_ids, fill_value=0).to_numpy()
    pooled = (run.cells[run.cells["used_for_image"].astype(bool)].groupby("image_id").size()
              .reindex(run.image_ids, fill_value=0).to_numpy())
    figure = Figure(figsize=(6.4, 2.8))
    figure.subplots_adjust(left=0.1, right=0.98, bottom=0.17, top=0.95)
    axes = figure.add_subplot()
    top = int(max(counts.max(initial=1), 1))
    bins = np.arange(top + 2) - 0.5 if top <= 60 else np.linspace(0, top + 1, 31)
    axes.hist(counts, bins=bins, color="#5b7fbf", label="all cells")
    axes.hist(pooled, bins=bins, histtype="step", color="#d0542a", linewidth=1.8, label="pooled (no excluded QC flag)")
    axes.set_xlabel("cells per image")
    axes.set_ylabel("images")
    axes.legend(frameon=False, fontsize=8)
    axes.spines[["top", "right"]].set_visible(False)
    return _save_figure(figure, path)


def pr_curves_figure(curves: CellCurves, path: Path) -> Path:
    """Small multiples: one cell-level PR curve per class carried by some true cell (shared axes: one set of
    tick labels per row and column keeps the figure quick to draw)."""
    from matplotlib.figure import Figure

    classes = sorted(curves.curves)
    columns = min(4, max(len(classes), 1))
    rows = max(1, -(-len(classes) // columns))
    height = 2.2 * rows + 0.6
    figure = Figure(figsize=(2.9 * columns, height))
    figure.subplots_adjust(left=0.07, right=0.99, bottom=0.55 / height, top=1 - 0.42 / height, hspace=0.6,
                           wspace=0.08)
    grid = figure.subplots(rows, columns, sharex=True, sharey=True, squeeze=False)
    for k, axes in enumerate(grid.ravel()):
        if k >= len(classes):
            axes.set_visible(False)
            continue
        class_id = classes[k]
        curve = curves.curves[class_id]
        axes.step(np.r_[0.0, curve.recall], np.r_[1.0, curve.precision], where="post", color=CLASS_COLOURS[class_id],
                  linewidth=1.8)
        axes.set_title(f"{CLASS_NAMES[class_id]}\nAP {curve.average_precision:.2f} ({curve.n_positives} cells)",
                       fontsize=8)
    grid[0, 0].set_xlim(0, 1.02)
    grid[0, 0].set_ylim(0, 1.05)
    for axes in grid[:, 0]:
        axes.set_ylabel("precision", fontsize=8)
    for k, axes in enumerate(grid.ravel()):
        if k < len(classes) and k + columns >= len(classes):  # lowest plot of its column
            axes.xaxis.set_tick_params(labelbottom=True)
            axes.set_xlabel("recall", fontsize=8)
    for axes in grid.ravel():
        axes.tick_params(labelsize=7)
    return _save_figure(figure, path)


# --------------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------------


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _url(*parts: str) -> str:
    return "/".join(quote(p) for p in parts)


def _page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{_e(title)}</title><style>{CSS}</style></head>\n<body><main>\n{body}\n</main></body></html>\n")


def _swatch(class_id: int) -> str:
    return f'<span class="sw" style="background:{CLASS_COLOURS[class_id]}"></span>'


def _chip(class_id: int) -> str:
    """A class's short name on its colour, in black or white, whichever contrasts more."""
    red, green, blue = (int(CLASS_COLOURS[class_id][k:k + 2], 16) for k in (1, 3, 5))
    ink = "#111" if 0.299 * red + 0.587 * green + 0.114 * blue > 140 else "#fff"
    return (f'<span class="chip" style="background:{CLASS_COLOURS[class_id]};color:{ink}" '
            f'title="{_e(CLASS_NAMES[class_id])}">{_e(SHORT_NAMES[class_id])}</span>')


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[int] = (),
           row_classes: Sequence[str] | None = None, css: str = "") -> str:
    """An HTML table; cells are already-escaped HTML; `numeric` column indexes are right-aligned."""
    heads = "".join(f'<th class="num">{h}</th>' if i in numeric else f"<th>{h}</th>" for i, h in enumerate(header))
    lines = [f'<table class="{css}"><thead><tr>{heads}</tr></thead><tbody>']
    for r, row in enumerate(rows):
        cls = f' class="{row_classes[r]}"' if row_classes and row_classes[r] else ""
        cells = "".join(f'<td class="num">{v}</td>' if i in numeric else f"<td>{v}</td>" for i, v in enumerate(row))
        lines.append(f"<tr{cls}>{cells}</tr>")
    lines.append("</tbody></table>")
    return "\n".join(lines)


def _model_description(model_dir: str) -> str:
    config = Path(model_dir) / "config.json"
    if not config.is_file():
        return _e(model_dir)
    try:
        model = json.loads(config.read_text()).get("model", {})
    except json.JSONDecodeError:
        return _e(model_dir)
    parts = [f"{k} {model[k]}" for k in ("encoder", "head", "input_size") if k in model]
    return f"<code>{_e(model_dir)}</code> <span class=\"muted\">({_e(', '.join(parts))})</span>"


@dataclass(frozen=True)
class _ReportFiles:
    """Paths (relative to the report folder, posix) of one image's maps and thumbnail."""

    overview: str
    panels: dict[int, str]
    attention: str
    thumbnail: str
    tiffs: tuple[str, ...]


def _place_maps(maps: ImageMaps, report_dir: Path) -> _ReportFiles:
    """Copy an image's PNG maps under `report_dir/maps/{id}/` (unless already there)."""
    target = report_dir / "maps" / maps.image_id
    target.mkdir(parents=True, exist_ok=True)

    def place(source: Path) -> str:
        destination = target / source.name
        if source.resolve() != destination.resolve():
            shutil.copyfile(source, destination)
        return destination.relative_to(report_dir).as_posix()

    tiffs = tuple(str(Path(p).resolve()) for p in (maps.cells_tiff, maps.probabilities_tiff) if p is not None)
    return _ReportFiles(place(maps.overview), {c: place(p) for c, p in maps.class_panels.items()},
                        place(maps.attention), place(maps.thumbnail), tiffs)


def _summary_table(run: PredictionRun, scores: ImageScores | None, curves: CellCurves | None,
                   truth_dir: Path | None) -> str:
    cells = run.cells
    flagged = int((cells["qc_flags"].astype(int) != 0).sum())
    pooled = int(cells["used_for_image"].astype(bool).sum())
    per_image = cells.groupby("image_id").size()
    parameters = run.provenance.get("parameters", {})
    rows = [
        ("Prediction folder", f"<code>{_e(run.pred_dir.resolve())}</code>"),
        ("Model", _model_description(str(run.manifest.get("model", "")))),
        ("Cell cache", f"<code>{_e(run.cache_path.resolve())}</code> <span class=\"muted\">(segmenter "
                       f"{_e(run.provenance.get('segmenter', '?'))}, working size {_e(parameters.get('working_size', '?'))} px)</span>"),
        ("Input images", f"<code>{_e(run.images_dir.resolve())}</code>"),
        ("Images", f"{len(run.images)}"),
        ("Cells", f"{len(cells)} ({pooled} pooled for image predictions, {flagged} QC-flagged); per image: "
                  f"min {per_image.min()}, median {per_image.median():.0f}, max {per_image.max()}"),
        ("Thresholds", "one per class (table below), fitted on validation images when the model was trained"),
    ]
    if scores is not None:
        rows.append(("Image labels", f"{_e(scores.source)}: {scores.n_images} labelled images; "
                                     f"macro F1 <b>{_fmt(scores.macro_f1)}</b>"))
    else:
        rows.append(("Image labels", "<span class=\"muted\">none (pass a labels CSV for image-level F1)</span>"))
    if curves is not None and truth_dir is not None:
        rows.append(("Per-cell truth", f"<code>{_e(truth_dir.resolve())}</code>: {curves.n_matched_cells}/"
                                       f"{curves.n_true_cells} true cells matched at IoU &ge; {CELL_MATCH_IOU} "
                                       f"({curves.n_pred_cells} predicted); cell mAP <b>{_fmt(curves.mean_ap)}</b>"))
    rows.append(("Created", f"{dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, hpa-cells "
                            f"{_e(run.manifest.get('package_version', '?'))}"))
    return _table(["", ""], [(k, v) for k, v in rows], css="summary")


def _class_table(run: PredictionRun, scores: ImageScores | None, curves: CellCurves | None) -> str:
    n_images = max(len(run.images), 1)
    predicted = np.zeros(NUM_CLASSES, dtype=np.int64)
    for ids in run.images["predicted_ids"]:
        predicted[list(ids)] += 1
    top = run.cells["top_label_id"].astype(int).value_counts().reindex(range(NUM_CLASSES), fill_value=0).to_numpy()
    mean_prob = run.images[list(CLASS_NAMES)].to_numpy(dtype=np.float64).mean(axis=0)
    header = ["id", "class", "threshold", "mean image p", "images predicted", "cells as top label"]
    numeric = [0, 2, 3, 4, 5]
    if scores is not None:
        header += ["labelled images", "image F1"]
        numeric += [6, 7]
    if curves is not None:
        header += ["cell AP"]
        numeric += [len(header) - 1]
    rows = []
    for c in range(NUM_CLASSES):
        row = [str(c), f"{_swatch(c)}{_e(CLASS_NAMES[c])}", f"{run.thresholds[c]:.2f}", f"{mean_prob[c]:.3f}",
               f"{predicted[c]} ({100 * predicted[c] / n_images:.0f}%)", str(int(top[c]))]
        if scores is not None:
            row += [str(int(scores.n_labelled[c])), _fmt(float(scores.f1[c]))]
        if curves is not None:
            curve = curves.curves.get(c)
            row += [_fmt(curve.average_precision) if curve else "–"]
        rows.append(row)
    return _table(header, rows, numeric)


def _gallery(run: PredictionRun, files: Mapping[str, _ReportFiles]) -> str:
    cards = []
    counts = run.cells.groupby("image_id").size()
    for image_id, ids in zip(run.images["image_id"], run.images["predicted_ids"], strict=True):
        if image_id not in files:
            continue
        chips = "".join(_chip(c) for c in ids) or '<span class="muted">no class above threshold</span>'
        cards.append(
            f'<div class="card"><a href="{_url("images", image_id + ".html")}">'
            f'<img src="{_url(*files[image_id].thumbnail.split("/"))}" alt="overview of {_e(image_id)}" loading="lazy">'
            f'<div class="id"><code>{_e(image_id)}</code></div>'
            f'<div class="muted">{int(counts.get(image_id, 0))} cells</div></a>'
            f"<div>{chips}</div></div>")
    return '<div class="gallery">\n' + "\n".join(cards) + "\n</div>"


def _cell_rows(run: PredictionRun, image_id: str) -> tuple[list[list[str]], list[str]]:
    cells = run.cells[run.cells["image_id"] == image_id].sort_values("cell_id")
    probs = cells[list(CLASS_NAMES)].to_numpy(dtype=np.float64)
    rows, classes = [], []
    for k, row in enumerate(cells.itertuples(index=False)):
        top = int(row.top_label_id)
        others = [c for c in np.argsort(-probs[k]) if c != top and probs[k, c] >= run.thresholds[c]]
        flags = str(row.qc_flag_names)
        rows.append([str(row.cell_id), f"{_swatch(top)}{_e(CLASS_NAMES[top])}", f"{row.top_probability:.3f}",
                     f"{row.attention:.4f}", _e(flags.replace("|", ", ")) or '<span class="muted">–</span>',
                     "yes" if bool(row.used_for_image) else "no",
                     ", ".join(f"{_e(CLASS_NAMES[c])} {probs[k, c]:.2f}" for c in others) or '<span class="muted">–</span>'])
        classes.append("flagged" if flags else "")
    return rows, classes


def _image_page(run: PredictionRun, ids: Sequence[str], index: int, files: _ReportFiles,
                truth_labels: Mapping[str, Sequence[int]]) -> str:
    """The page of image `ids[index]`; `ids` are the report's images in order (for previous/next links)."""
    image_id = ids[index]
    row = run.images[run.images["image_id"] == image_id].iloc[0]
    nav = ['<a href="../index.html">&larr; report index</a>']
    if index > 0:
        nav.append(f'<a href="{_url(ids[index - 1] + ".html")}">&lsaquo; previous</a>')
    if index + 1 < len(ids):
        nav.append(f'<a href="{_url(ids[index + 1] + ".html")}">next &rsaquo;</a>')
    up = "../"
    probs = row[list(CLASS_NAMES)].to_numpy(dtype=np.float64)
    truth = set(truth_labels.get(image_id, ()))
    has_truth = image_id in truth_labels
    shown = sorted(set(row["predicted_ids"]) | truth | set(np.argsort(-probs)[:5].tolist()), key=lambda c: -probs[c])
    header = ["class", "image p", "threshold", "predicted"] + (["labelled"] if has_truth else [])
    table_rows = []
    for c in shown:
        line = [f"{_swatch(c)}{_e(CLASS_NAMES[c])}", f"{probs[c]:.3f}", f"{run.thresholds[c]:.2f}",
                "<b>yes</b>" if c in row["predicted_ids"] else "no"]
        if has_truth:
            line.append("<b>yes</b>" if c in truth else "no")
        table_rows.append(line)
    panels = [(f"{CLASS_NAMES[c]} (cell probability)", p) for c, p in files.panels.items()]
    panels.append(("attention", files.attention))
    panel_html = "\n".join(
        f'<figure style="margin:0"><a href="{up}{_url(*p.split("/"))}"><img src="{up}{_url(*p.split("/"))}" '
        f'alt="{_e(caption)}" loading="lazy"></a><figcaption class="small muted">{_e(caption)}</figcaption></figure>'
        for caption, p in panels)
    cell_rows, row_classes = _cell_rows(run, image_id)
    tiffs = "".join(f"<li><code>{_e(t)}</code></li>" for t in files.tiffs)
    body = [
        f"<nav>{''.join(nav)}</nav>",
        f"<h1><code>{_e(image_id)}</code></h1>",
        f'<div class="overview"><a href="{up}{_url(*files.overview.split("/"))}"><img src="{up}{_url(*files.overview.split("/"))}" '
        f'alt="overview of {_e(image_id)}"></a></div>',
        "<h2>Image-level prediction</h2>",
        _table(header, table_rows, [1, 2]),
        "<h2>Per-class and attention maps</h2>",
        f'<div class="panels">{panel_html}</div>',
        f"<h2>Cells ({len(cell_rows)})</h2>",
        '<p class="small muted">Probabilities are cells.csv\'s cell scores (by default sqrt(the cell\'s own probability '
        "x its image's); manifest.json's cell_score says which); \"other labels\" lists every other class whose cell "
        "score reaches that class's image-level threshold. Grey rows are QC-flagged cells.</p>",
        _table(["cell id", "top label", "probability", "attention", "QC flags", "pooled", "other labels ≥ threshold"],
               cell_rows, [0, 2, 3], row_classes),
    ]
    if tiffs:
        body.append(f"<h2>Machine-readable maps (OME-TIFF, original resolution)</h2><ul class=\"small\">{tiffs}</ul>")
    return _page(f"{image_id} – hpa-cells", "\n".join(body))


def _labels_for(run: PredictionRun, labels_path: Path | None) -> tuple[dict[str, tuple[int, ...]], str]:
    if labels_path is not None:
        return {k: tuple(v) for k, v in read_labels(labels_path).items()}, f"labels file {labels_path}"
    return dict(run.cache_labels), "labels stored in the cell cache"


def write_report(run: PredictionRun, maps: Sequence[ImageMaps], report_dir: str | os.PathLike[str],
                 labels_path: Path | None = None, truth_dir: Path | None = None) -> Path:
    """Write the report folder (layout in the module docstring) for the images in `maps`; returns index.html."""
    report_dir = Path(report_dir)
    (report_dir / "images").mkdir(parents=True, exist_ok=True)
    (report_dir / "figures").mkdir(exist_ok=True)
    labels, source = _labels_for(run, labels_path)
    scores = image_scores(run, labels, source) if labels else None
    curves = cell_curves(run, truth_dir) if truth_dir is not None else None
    files = {m.image_id: _place_maps(m, report_dir) for m in maps}

    cells_per_image_figure(run, report_dir / "figures" / "cells_per_image.png")
    sections = [
        "<h1>hpa-cells prediction report</h1>",
        "<h2>Run</h2>", _summary_table(run, scores, curves, truth_dir),
        "<h2>Classes</h2>",
        '<p class="small muted">Images predicted: image probability at/above the class threshold. Cells as top label: '
        "cells whose most probable class it is (QC-flagged cells included).</p>",
        _class_table(run, scores, curves),
        "<h2>Cells per image</h2>",
        '<img src="figures/cells_per_image.png" alt="histogram of cells per image">',
    ]
    if curves is not None:
        pr_curves_figure(curves, report_dir / "figures" / "pr_curves.png")
        sections += ["<h2>Cell-level precision-recall</h2>",
                     f'<p class="small muted">Predicted cells matched to true cells at IoU &ge; {CELL_MATCH_IOU}; '
                     "true cells without a match are misses that cap recall.</p>",
                     '<img src="figures/pr_curves.png" alt="cell-level precision-recall curves per class" '
                     'style="max-width:100%">']
    sections += [f"<h2>Images ({len(files)})</h2>", _gallery(run, files)]
    index_path = report_dir / "index.html"
    index_path.write_text(_page("hpa-cells prediction report", "\n".join(sections)), encoding="utf-8")
    ordered = [i for i in run.image_ids if i in files]
    for index, image_id in enumerate(ordered):
        page = _image_page(run, ordered, index, files[image_id], labels)
        (report_dir / "images" / f"{image_id}.html").write_text(page, encoding="utf-8")
    logger.info("wrote report of %d images to %s", len(files), index_path)
    return index_path


@dataclass(frozen=True)
class MapsAndReport:
    """What `write_maps_and_report` wrote and how long it took."""

    maps: list[ImageMaps]
    maps_dir: Path
    report_index: Path | None
    seconds: float


def write_maps_and_report(pred_dir: str | os.PathLike[str], maps_dir: Path | None = None,
                          report_dir: Path | None = None, extra_classes: Sequence[int] = (),
                          labels_path: Path | None = None, truth_dir: Path | None = None,
                          write_tiff: bool = True, cache_path: Path | None = None, images_dir: Path | None = None,
                          limit: int | None = None, show_progress: bool = False) -> MapsAndReport:
    """Maps of a prediction folder into `maps_dir` and/or a report into `report_dir` (what scripts/make_maps.py
    and `predict.py --maps/--report` run). Without `maps_dir` the maps are drawn straight into
    `report_dir/maps` and no OME-TIFF is written. `limit`: only the first N images."""
    from hpa_cells.maps import write_maps

    if maps_dir is None and report_dir is None:
        raise ValueError("give a maps folder, a report folder or both")
    started = time.perf_counter()
    target = Path(maps_dir) if maps_dir is not None else Path(report_dir) / "maps"
    with PredictionRun(pred_dir, cache_path=cache_path, images_dir=images_dir) as run:
        maps = write_maps(run, target, extra_classes, write_tiff=write_tiff and maps_dir is not None,
                          image_ids=run.image_ids[:limit] if limit is not None else None,
                          show_progress=show_progress)
        index = write_report(run, maps, report_dir, labels_path, truth_dir) if report_dir is not None else None
    return MapsAndReport(maps, target, index, time.perf_counter() - started)
