"""Pseudo-labels of self-training (`mil.self_training`): the rule that turns a model's cell probabilities into
per-cell targets, and their CSV file.

The 2021 HPA single-cell winners trained on image labels, then relabelled cells with their own predictions and
trained again. Here a round works like this:

1. the previous round's model predicts every cell of the training images (the cells' own probabilities);
2. `make_pseudo_labels` turns them into per-cell targets, with the image labels as a hard constraint:
   - a class the image does not have is 0 for every one of its cells (certain: no cell of such an image has it);
   - for a class the image has, each cell is compared with the image's best cell for that class (`p_max`): 1 if
     its probability is at least `positive_ratio x p_max` (so the best cell is always 1: some cell has the class),
     0 if at most `negative_ratio x p_max`, unknown in between;
3. the next model trains from scratch on the same images and split with the usual image loss plus
   `pseudo_label_weight` x BCE on the known cell targets (`mil.training.losses.pseudo_label_loss`).

The pseudo-labels are a CSV (`PSEUDO_LABEL_COLUMNS`: image_id, cell_id, labels, uncertain; class ids space
separated, every class in neither column is 0), readable by people and by `pseudo_label_matrix`.
`mil.self_training.train_with_self_training` runs the rounds.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hpa_cells.atomic_files import write_text_atomic
from hpa_cells.cache import CellCache
from hpa_cells.classes import CLASS_NAMES, NUM_CLASSES

logger = logging.getLogger(__name__)

PSEUDO_LABEL_COLUMNS = ("image_id", "cell_id", "labels", "uncertain")


class PseudoLabelError(ValueError):
    """A pseudo-label file that is malformed or does not match the cache; the message names the file and row."""


@dataclass(frozen=True)
class PseudoLabelRule:
    """How confident a cell must be, relative to its image's best cell for the class, to become a target."""

    positive_ratio: float = 0.5
    negative_ratio: float = 0.2

    def __post_init__(self) -> None:
        if not 0.0 <= self.negative_ratio < self.positive_ratio <= 1.0:
            raise ValueError("pseudo-label ratios must satisfy 0 <= negative_ratio < positive_ratio <= 1, got "
                             f"{self.negative_ratio} and {self.positive_ratio}")


def make_pseudo_labels(cells: pd.DataFrame, image_labels: dict[str, np.ndarray],
                       rule: PseudoLabelRule = PseudoLabelRule()) -> pd.DataFrame:
    """Per-cell targets for the cells of the images in `image_labels` (image id -> `K` multi-hot), from `cells`
    (columns image_id, cell_id and the class names: the cells' own probabilities). Returns a frame with
    `PSEUDO_LABEL_COLUMNS`; images missing from `cells` are missing from it too."""
    classes = list(CLASS_NAMES)
    rows = []
    for image_id, frame in cells[cells["image_id"].isin(set(image_labels))].groupby("image_id", sort=True):
        probs = frame[classes].to_numpy(np.float64)
        present = np.asarray(image_labels[image_id], dtype=bool)
        best = probs.max(axis=0)
        positive = present & (probs >= rule.positive_ratio * best)
        negative = ~present | (probs <= rule.negative_ratio * best)
        uncertain = ~positive & ~negative
        for cell_id, pos, unk in zip(frame["cell_id"].to_numpy(), positive, uncertain, strict=True):
            rows.append((str(image_id), int(cell_id), " ".join(map(str, np.flatnonzero(pos))),
                         " ".join(map(str, np.flatnonzero(unk)))))
    return pd.DataFrame(rows, columns=list(PSEUDO_LABEL_COLUMNS))


def pseudo_label_summary(labels: pd.DataFrame) -> dict:
    """Counts of a pseudo-label table: cells, cells with at least one positive class, positive and unknown
    (cell, class) entries."""
    positives = labels["labels"].str.split().str.len().fillna(0)
    unknown = labels["uncertain"].str.split().str.len().fillna(0)
    return {"cells": len(labels), "cells_with_a_positive": int((positives > 0).sum()),
            "positive_entries": int(positives.sum()), "unknown_entries": int(unknown.sum())}


def write_pseudo_labels(labels: pd.DataFrame, path: Path) -> None:
    """The table as a CSV, written atomically."""
    import io

    buffer = io.StringIO()
    labels.to_csv(buffer, index=False, columns=list(PSEUDO_LABEL_COLUMNS))
    write_text_atomic(Path(path), buffer.getvalue())


def _class_ids(text: str, path: Path, line: int) -> list[int]:
    try:
        ids = [int(v) for v in text.split()]
    except ValueError:
        raise PseudoLabelError(f"{path} line {line}: class ids must be integers, got {text!r}") from None
    bad = [v for v in ids if not 0 <= v < NUM_CLASSES]
    if bad:
        raise PseudoLabelError(f"{path} line {line}: class id {bad[0]} is outside 0..{NUM_CLASSES - 1}")
    return ids


def read_pseudo_labels(path: Path) -> dict[tuple[str, int], tuple[list[int], list[int]]]:
    """(image id, cell id) -> (positive class ids, unknown class ids); errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise PseudoLabelError(f"pseudo-label file not found: {path}")
    out = {}
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in PSEUDO_LABEL_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise PseudoLabelError(f"{path}: missing column(s) {', '.join(missing)}; expected "
                                   f"{', '.join(PSEUDO_LABEL_COLUMNS)}")
        for line, row in enumerate(reader, start=2):
            try:
                cell_id = int(row["cell_id"])
            except ValueError:
                raise PseudoLabelError(f"{path} line {line}: cell_id must be an integer, got "
                                       f"{row['cell_id']!r}") from None
            out[(row["image_id"], cell_id)] = (_class_ids(row["labels"] or "", path, line),
                                               _class_ids(row["uncertain"] or "", path, line))
    return out


def pseudo_label_matrix(cache: CellCache, path: Path, image_indices) -> np.ndarray:
    """`num_cells,K` float32 targets in the cache's cell order: 1, 0, or NaN (unknown). Every cell of
    `image_indices` must have a row; other images' cells are NaN (never trained on)."""
    labels = read_pseudo_labels(path)
    table = cache.cell_table()
    matrix = np.full((len(table), NUM_CLASSES), np.nan, dtype=np.float32)
    wanted = {int(i) for i in image_indices}
    for row, (image_id, image_index, cell_id) in enumerate(
            zip(table["image_id"], table["image_index"], table["cell_id"], strict=True)):
        if int(image_index) not in wanted:
            continue
        entry = labels.get((str(image_id), int(cell_id)))
        if entry is None:
            raise PseudoLabelError(f"{path} has no row for cell {int(cell_id)} of image {image_id!r} in "
                                   f"{cache.path}; make the pseudo-labels from this cache")
        matrix[row] = 0.0
        matrix[row, entry[0]] = 1.0
        matrix[row, entry[1]] = np.nan
    return matrix
