"""What a prediction folder holds: the in-memory record (`Predictions`), the cell-score rules, the file names,
the columns every reader may rely on, the `predicted` field's format and the folder's one error class.

`hpa_cells.predictions.writer` writes a folder from a `Predictions`; `hpa_cells.predictions.reader` reads it back.
Both take the names and column lists from here, so the contract is stated once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hpa_cells.classes import CLASS_NAMES, NUM_CLASSES

CELL_SCORES = {
    "gated": "sqrt(cell probability x image probability): the geometric mean of each cell's own class probability "
             "and its image's",
    "cell": "each cell's own class probability (the pooling head's per-cell logits)",
}
"""How `cells.csv`'s class probabilities are made from the model's outputs (recorded in manifest.json)."""

LEGACY_CELL_SCORE = "cell"
"""The cell score of folders written before it was recorded: they hold the cells' own probabilities."""

SUBMISSION_FILE = "submission.csv"
IMAGES_FILE = "images.csv"
CELLS_FILE = "cells.csv"
CELLS_PARQUET_FILE = "cells.parquet"
ATTENTION_FILE = "attention.h5"
MANIFEST_FILE = "manifest.json"

IMAGE_COLUMNS: tuple[str, ...] = ("image_id", "predicted", *CLASS_NAMES)
"""Columns of images.csv that readers rely on (the writer also adds `n_cells`, `n_cells_pooled`)."""
CELL_COLUMNS: tuple[str, ...] = (
    "image_id", "cell_id", "centroid_y", "centroid_x", "qc_flags", "qc_flag_names", "used_for_image",
    *CLASS_NAMES, "top_label_id", "top_label", "top_probability", "attention",
)
"""Columns of cells.csv that readers rely on (the writer also keeps the bbox, areas and any other cell column)."""
IMAGE_NUMBERS: tuple[str, ...] = CLASS_NAMES
"""images.csv columns that must hold a number in every row (a cut row leaves the last ones empty)."""
CELL_NUMBERS: tuple[str, ...] = ("cell_id", "centroid_y", "centroid_x", "qc_flags", *CLASS_NAMES, "top_label_id",
                                 "top_probability", "attention")
"""cells.csv columns that must hold a number in every row."""
TEXT_COLUMNS = {"image_id": str, "predicted": str, "qc_flag_names": str, "top_label": str}
"""Columns read as text (image ids such as `0001` keep their zeros; empty fields stay empty strings)."""


class PredictionFolderError(ValueError):
    """A prediction folder that lacks a file or whose files are damaged or disagree; the message names the file
    (and the line, for a bad row)."""


def format_predicted_ids(class_ids: Iterable[int]) -> str:
    """images.csv's `predicted` field: class ids separated by spaces (empty for none)."""
    return " ".join(str(int(c)) for c in class_ids)


def parse_predicted_ids(text: str, where: str = "predicted") -> tuple[int, ...]:
    """The class ids of a `predicted` field; PredictionFolderError naming `where` for a bad one."""
    try:
        ids = tuple(int(x) for x in str(text).split())
    except ValueError:
        raise PredictionFolderError(f"{where}: predicted {text!r} is not space-separated class ids") from None
    bad = [c for c in ids if not 0 <= c < NUM_CLASSES]
    if bad:
        raise PredictionFolderError(f"{where}: predicted class ids {bad} are outside 0..{NUM_CLASSES - 1}")
    return ids


def require_cell_score_of(cell_score: object, source: Path | str) -> str:
    """`cell_score` when it is a key of `CELL_SCORES`, else PredictionFolderError naming `source`."""
    if cell_score not in CELL_SCORES:
        raise PredictionFolderError(f"{source}: unknown cell_score {cell_score!r}; expected one of "
                                    f"{', '.join(CELL_SCORES)}")
    return str(cell_score)


@dataclass
class Predictions:
    """image_ids `M`; image_probs `M,K`; cell table (one row per cell, probabilities in class-name columns);
    cell_attention `C,A` (A = 1 or K) aligned with the cell table; thresholds `K`."""

    image_ids: list[str]
    image_probs: np.ndarray
    cells: pd.DataFrame
    cell_attention: np.ndarray
    thresholds: np.ndarray
    cell_score: str = "gated"
    """What the cell table's class probabilities are (a key of `CELL_SCORES`)."""

    def predicted_labels(self) -> dict[str, tuple[int, ...]]:
        """Image id -> class ids whose probability reaches the class threshold."""
        hits = self.image_probs >= self.thresholds
        return {i: tuple(int(c) for c in np.flatnonzero(row)) for i, row in zip(self.image_ids, hits, strict=True)}
