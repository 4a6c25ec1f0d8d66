"""The report's HTML pages, rendered from the Jinja2 templates in `templates/` with autoescaping on.

Python collects what a page shows as plain values (names, ids, paths, numbers already formatted as text);
the templates hold all markup, and autoescaping escapes every value, so a user string (an image id, a path, a
version) can never become markup. Links are percent-encoded here (`relative_url`).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from hpa_cells.classes import CLASS_COLOURS, CLASS_NAMES, NUM_CLASSES, SHORT_NAMES
from hpa_cells.maps import PredictionRun
from hpa_cells.metrics import CELL_MATCH_IOU
from hpa_cells.scoring import FolderScores

DASH = "–"


@dataclass(frozen=True)
class ReportFiles:
    """Paths (relative to the report folder, posix) of one image's maps and thumbnail, and its OME-TIFFs
    (absolute)."""

    overview: str
    panels: dict[int, str]
    attention: str
    thumbnail: str
    tiffs: tuple[str, ...]


@lru_cache(maxsize=1)
def environment() -> Environment:
    """The Jinja2 environment of the report templates (autoescaping for `.html` and `.j2` templates)."""
    return Environment(loader=PackageLoader("hpa_cells.report", "templates"),
                       autoescape=select_autoescape(["html", "j2"]), undefined=StrictUndefined,
                       trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)


def render(template: str, **context: Any) -> str:
    """A page of the report from `templates/{template}`."""
    return environment().get_template(template).render(**context)


def relative_url(*parts: str) -> str:
    """A relative link from path parts, each percent-encoded."""
    return "/".join(quote(p) for p in parts)


def fmt(value: float | None, digits: int = 3) -> str:
    """A number with `digits` decimals; a dash for None, NaN or infinity."""
    return DASH if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def chip(class_id: int) -> dict[str, str]:
    """A class's short name on its colour, in black or white ink, whichever contrasts more."""
    red, green, blue = (int(CLASS_COLOURS[class_id][k:k + 2], 16) for k in (1, 3, 5))
    ink = "#111" if 0.299 * red + 0.587 * green + 0.114 * blue > 140 else "#fff"
    return {"colour": CLASS_COLOURS[class_id], "ink": ink, "name": CLASS_NAMES[class_id],
            "short": SHORT_NAMES[class_id]}


def _model_description(model_dir: str) -> dict[str, str | None]:
    """The model folder and, when its config.json is readable, its encoder, head and input size."""
    config = Path(model_dir) / "config.json"
    if not config.is_file():
        return {"model_dir": model_dir, "model_details": None}
    try:
        model = json.loads(config.read_text()).get("model", {})
    except json.JSONDecodeError:
        return {"model_dir": model_dir, "model_details": None}
    parts = [f"{k} {model[k]}" for k in ("encoder", "head", "input_size") if k in model]
    return {"model_dir": model_dir, "model_details": ", ".join(parts)}


def image_scores_shown(scores: FolderScores) -> bool:
    """Whether the report shows image-level scores (some predicted image has labels)."""
    return scores.n_images > 0


def cell_scores_shown(scores: FolderScores) -> bool:
    """Whether the report shows cell-level scores (per-cell truth was given)."""
    return scores.cell_map is not None


def summary(run: PredictionRun, scores: FolderScores, label_source: str, truth_dir: Path | None) -> dict[str, Any]:
    """The run summary table of the index page (`label_source`: where the image labels come from)."""
    cells = run.cells
    flagged = int((cells["qc_flags"].astype(int) != 0).sum())
    pooled = int(cells["used_for_image"].astype(bool).sum())
    per_image = cells.groupby("image_id").size()
    parameters = run.provenance.get("parameters", {})
    out: dict[str, Any] = {
        "pred_dir": str(run.pred_dir.resolve()),
        **_model_description(str(run.manifest.get("model", ""))),
        "cache": str(run.cache_path.resolve()),
        "segmenter": run.provenance.get("segmenter", "?"),
        "working_size": parameters.get("working_size", "?"),
        "images_dir": str(run.images_dir.resolve()),
        "n_images": len(run.images),
        "n_unpredicted": len(run.folder.unpredicted),
        "cells": f"{len(cells)} ({pooled} pooled for image predictions, {flagged} QC-flagged); per image: "
                 f"min {per_image.min()}, median {per_image.median():.0f}, max {per_image.max()}",
        "scores": None, "truth": None,
        "created": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "version": run.manifest.get("package_version", "?"),
    }
    if image_scores_shown(scores):
        out["scores"] = {"source": label_source, "n_images": scores.n_images, "macro_f1": fmt(scores.image_macro_f1),
                         "without_prediction": (scores.without_prediction_line()
                                                if scores.labelled_without_prediction else None)}
    if cell_scores_shown(scores) and truth_dir is not None:
        out["truth"] = {"dir": str(truth_dir.resolve()), "n_matched": scores.cells_matched,
                        "n_true": scores.cells_true, "n_pred": scores.cells_predicted, "mean_ap": fmt(scores.cell_map)}
    return out


def class_table(run: PredictionRun, scores: FolderScores) -> dict[str, Any]:
    """The per-class table of the index page: header, right-aligned columns, one row per class."""
    n_images = max(len(run.images), 1)
    predicted = np.zeros(NUM_CLASSES, dtype=np.int64)
    for ids in run.images["predicted_ids"]:
        predicted[list(ids)] += 1
    top = run.cells["top_label_id"].astype(int).value_counts().reindex(range(NUM_CLASSES), fill_value=0).to_numpy()
    mean_prob = run.images[list(CLASS_NAMES)].to_numpy(dtype=np.float64).mean(axis=0)
    header = ["id", "class", "threshold", "mean image p", "images predicted", "cells as top label"]
    numeric = [0, 2, 3, 4, 5]
    has_scores, has_curves = image_scores_shown(scores), cell_scores_shown(scores)
    if has_scores:
        header += ["labelled images", "image F1"]
        numeric += [6, 7]
    if has_curves:
        header += ["cell AP"]
        numeric += [len(header) - 1]
    f1 = scores.per_class_f1_array
    rows = []
    for c in range(NUM_CLASSES):
        row = {"id": c, "colour": CLASS_COLOURS[c], "name": CLASS_NAMES[c], "threshold": f"{run.thresholds[c]:.2f}",
               "mean_p": f"{mean_prob[c]:.3f}", "predicted": f"{predicted[c]} ({100 * predicted[c] / n_images:.0f}%)",
               "top": int(top[c])}
        if has_scores:
            row |= {"labelled": int(scores.class_support[c]), "f1": fmt(float(f1[c]))}
        if has_curves:
            curve = scores.cell_curves.get(c)
            row["ap"] = fmt(curve.average_precision) if curve else DASH
        rows.append(row)
    return {"header": header, "numeric": numeric, "rows": rows, "has_scores": has_scores, "has_curves": has_curves}


def gallery(run: PredictionRun, files: Mapping[str, ReportFiles]) -> list[dict[str, Any]]:
    """One card per image with maps: link to its page, thumbnail, cell count and predicted classes."""
    cards = []
    counts = run.cells.groupby("image_id").size()
    for image_id, ids in zip(run.images["image_id"], run.images["predicted_ids"], strict=True):
        if image_id not in files:
            continue
        cards.append({"image_id": image_id, "href": relative_url("images", image_id + ".html"),
                      "thumbnail": relative_url(*files[image_id].thumbnail.split("/")),
                      "n_cells": int(counts.get(image_id, 0)), "chips": [chip(c) for c in ids]})
    return cards


def index_page(run: PredictionRun, files: Mapping[str, ReportFiles], scores: FolderScores, label_source: str,
               truth_dir: Path | None, failures: Mapping[str, str] | None = None) -> str:
    """index.html: run summary, class table, figures, the gallery, and the images whose maps could not be drawn
    (`failures`: image id -> one-line error) (figures are drawn by the caller).
    `scores`: `hpa_cells.scoring.score_prediction_folder` of the run (the numbers evaluate.py prints)."""
    not_drawn = [{"image_id": image_id, "error": error} for image_id, error in (failures or {}).items()]
    return render("index.html.j2", title="hpa-cells prediction report",
                  s=summary(run, scores, label_source, truth_dir), classes=class_table(run, scores),
                  pr_curves=cell_scores_shown(scores), iou=CELL_MATCH_IOU, cards=gallery(run, files),
                  not_drawn=not_drawn)


def cell_rows(run: PredictionRun, image_id: str) -> list[dict[str, Any]]:
    """One row per cell of the image (by cell id): top label, probability, attention, QC flags, pooling, and
    the other classes whose cell score reaches their threshold."""
    cells = run.cells[run.cells["image_id"] == image_id].sort_values("cell_id")
    probs = cells[list(CLASS_NAMES)].to_numpy(dtype=np.float64)
    rows = []
    for k, row in enumerate(cells.itertuples(index=False)):
        top = int(row.top_label_id)
        others = [c for c in np.argsort(-probs[k]) if c != top and probs[k, c] >= run.thresholds[c]]
        flags = str(row.qc_flag_names)
        rows.append({"cell_id": row.cell_id, "colour": CLASS_COLOURS[top], "top": CLASS_NAMES[top],
                     "probability": f"{row.top_probability:.3f}", "attention": f"{row.attention:.4f}",
                     "flags": flags.replace("|", ", "), "pooled": "yes" if bool(row.used_for_image) else "no",
                     "others": ", ".join(f"{CLASS_NAMES[c]} {probs[k, c]:.2f}" for c in others),
                     "flagged": bool(flags)})
    return rows


def image_page(run: PredictionRun, ids: Sequence[str], index: int, files: ReportFiles,
               truth_labels: Mapping[str, Sequence[int]]) -> str:
    """The page of image `ids[index]`; `ids` are the report's images in order (for previous/next links)."""
    image_id = ids[index]
    row = run.images[run.images["image_id"] == image_id].iloc[0]
    probs = row[list(CLASS_NAMES)].to_numpy(dtype=np.float64)
    truth = set(truth_labels.get(image_id, ()))
    shown = sorted(set(row["predicted_ids"]) | truth | set(np.argsort(-probs)[:5].tolist()), key=lambda c: -probs[c])
    class_rows = [{"colour": CLASS_COLOURS[c], "name": CLASS_NAMES[c], "p": f"{probs[c]:.3f}",
                   "threshold": f"{run.thresholds[c]:.2f}", "predicted": c in row["predicted_ids"],
                   "labelled": c in truth} for c in shown]
    panels = [(f"{CLASS_NAMES[c]} (cell probability)", p) for c, p in files.panels.items()]
    panels.append(("attention", files.attention))
    return render(
        "image.html.j2", title=f"{image_id} – hpa-cells", image_id=image_id,
        previous=relative_url(ids[index - 1] + ".html") if index > 0 else None,
        next=relative_url(ids[index + 1] + ".html") if index + 1 < len(ids) else None,
        overview=relative_url(*files.overview.split("/")), class_rows=class_rows,
        has_truth=image_id in truth_labels,
        panels=[{"caption": caption, "href": relative_url(*p.split("/"))} for caption, p in panels],
        cells=cell_rows(run, image_id), tiffs=files.tiffs)
