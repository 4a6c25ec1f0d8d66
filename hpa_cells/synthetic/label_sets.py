"""Image label sets for the synthetic generator: the real 2018 frequency table, balancing and sampling.

Synthetic images get their image-level label set drawn from the label sets that real 2018 HPA images
carry (so co-occurrences such as "Nucleoplasm + Cytosol" keep their real frequency). The table of
distinct sets and counts is derived from the 2018 label file once and committed as
`hpa_cells/resources/label_sets_2018.csv` (columns `labels,count`; `labels` are sorted
space-separated class ids), so the generator needs no real data at run time.

Real frequencies are very skewed (Nucleoplasm in 41% of images, Rods & rings in 0.04%), so a
`balanced` sampler reweights the sets, multiplying the weight of every set that holds an
under-represented class until each class is expected in at least `min_prevalence` of the images.
"""

from __future__ import annotations

import csv
import logging
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from hpa_cells.classes import NUM_CLASSES
from hpa_cells.labels import read_labels

logger = logging.getLogger(__name__)

LABEL_SETS_RESOURCE = "label_sets_2018.csv"
"""File name of the committed table inside the `hpa_cells.resources` package folder."""

TABLE_HEADER = ("labels", "count")

DEFAULT_MIN_PREVALENCE = 0.03
"""Each class is expected in at least this fraction of images under balanced sampling."""


class LabelSetTableError(ValueError):
    """A label-set table file is malformed; the message names the file and line."""


class BalancingError(RuntimeError):
    """Balanced reweighting cannot reach the requested minimum prevalence for every class."""


@dataclass(frozen=True)
class LabelSetTable:
    """Distinct image label sets (each a sorted tuple of class ids) and how many images carry each.

    Rows are ordered by count (descending), then by the label tuple, so two tables built from the same
    labels are equal and write byte-identical files.
    """

    label_sets: tuple[tuple[int, ...], ...]
    counts: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.label_sets) != len(self.counts):
            raise ValueError(f"{len(self.label_sets)} label sets but {len(self.counts)} counts")
        if not self.label_sets:
            raise ValueError("a label-set table needs at least one label set")
        for labels, count in zip(self.label_sets, self.counts, strict=True):
            if count <= 0:
                raise ValueError(f"label set {labels}: count must be positive, got {count}")
            if list(labels) != sorted(set(labels)) or any(not 0 <= c < NUM_CLASSES for c in labels):
                raise ValueError(
                    f"label set {labels}: must be sorted unique class ids in 0-{NUM_CLASSES - 1}"
                )

    @property
    def n_images(self) -> int:
        """Number of images the table was counted from."""
        return int(sum(self.counts))

    def membership(self) -> np.ndarray:
        """`S,28` 0/1 float matrix: row s marks the classes of label set s."""
        matrix = np.zeros((len(self.label_sets), NUM_CLASSES), dtype=np.float64)
        for row, labels in enumerate(self.label_sets):
            matrix[row, list(labels)] = 1.0
        return matrix

    def class_counts(self) -> np.ndarray:
        """`28,` number of images holding each class."""
        return (np.asarray(self.counts, dtype=np.float64) @ self.membership()).astype(np.int64)

    def frequencies(self) -> np.ndarray:
        """`S,` the real probability of each label set (counts / images)."""
        counts = np.asarray(self.counts, dtype=np.float64)
        return counts / counts.sum()


def count_label_sets(label_sets: Iterable[Iterable[int]]) -> LabelSetTable:
    """Count how often each distinct label set occurs (each set is sorted and de-duplicated first)."""
    counter = Counter(tuple(sorted({int(c) for c in labels})) for labels in label_sets)
    if () in counter:
        logger.info("ignoring %d images with an empty label set", counter.pop(()))
    rows = sorted(counter.items(), key=lambda item: (-item[1], item[0]))
    return LabelSetTable(label_sets=tuple(r[0] for r in rows), counts=tuple(r[1] for r in rows))


def derive_label_set_table(labels_csv: str | os.PathLike[str]) -> LabelSetTable:
    """Derive the label-set frequency table from a 2018-scheme label file (`Id,Target`)."""
    labels = read_labels(labels_csv, scheme="2018")
    return count_label_sets(labels.values())


def write_label_set_table(path: str | os.PathLike[str], table: LabelSetTable) -> Path:
    """Write a table as CSV (`labels,count`, one distinct label set per row)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(TABLE_HEADER)
        for labels, count in zip(table.label_sets, table.counts, strict=True):
            writer.writerow((" ".join(str(c) for c in labels), count))
    return path


def _parse_table_row(source: str, line_no: int, row: list[str]) -> tuple[tuple[int, ...], int]:
    if len(row) != 2:
        raise LabelSetTableError(
            f"{source}, line {line_no}: expected 2 fields (labels,count), got {len(row)}"
        )
    try:
        labels = tuple(int(token) for token in row[0].split())
        count = int(row[1])
    except ValueError:
        raise LabelSetTableError(f"{source}, line {line_no}: not integers: {','.join(row)!r}") from None
    if not labels or list(labels) != sorted(set(labels)) or any(not 0 <= c < NUM_CLASSES for c in labels):
        raise LabelSetTableError(
            f"{source}, line {line_no}: labels {row[0]!r} must be sorted unique class ids in 0-{NUM_CLASSES - 1}"
        )
    if count <= 0:
        raise LabelSetTableError(f"{source}, line {line_no}: count must be positive, got {count}")
    return labels, count


def _parse_table_text(text: str, source: str) -> LabelSetTable:
    rows = list(csv.reader(text.splitlines()))
    if not rows or tuple(rows[0]) != TABLE_HEADER:
        found = ",".join(rows[0]) if rows else "<empty file>"
        raise LabelSetTableError(
            f"{source}, line 1: expected header {','.join(TABLE_HEADER)!r}, found {found!r}"
        )
    parsed = [_parse_table_row(source, number, row) for number, row in enumerate(rows[1:], start=2) if row]
    if not parsed:
        raise LabelSetTableError(f"{source}: no label-set rows after the header")
    seen: dict[tuple[int, ...], int] = {}
    for number, (labels, _) in enumerate(parsed, start=2):
        if labels in seen:
            raise LabelSetTableError(
                f"{source}, line {number}: label set {labels} repeats line {seen[labels]}"
            )
        seen[labels] = number
    return LabelSetTable(label_sets=tuple(p[0] for p in parsed), counts=tuple(p[1] for p in parsed))


def read_label_set_table(path: str | os.PathLike[str]) -> LabelSetTable:
    """Read a table written by `write_label_set_table`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LabelSetTableError(f"{path}: label-set table not found") from None
    return _parse_table_text(text, str(path))


def load_real_label_sets() -> LabelSetTable:
    """The committed table of real 2018 label sets (`hpa_cells/resources/label_sets_2018.csv`)."""
    resource = resources.files("hpa_cells").joinpath("resources", LABEL_SETS_RESOURCE)
    return _parse_table_text(
        resource.read_text(encoding="utf-8"), f"hpa_cells/resources/{LABEL_SETS_RESOURCE}"
    )


def expected_prevalence(table: LabelSetTable, probabilities: np.ndarray) -> np.ndarray:
    """`28,` expected fraction of images holding each class when sets are drawn with `probabilities` (`S,`)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.shape != (len(table.label_sets),):
        raise ValueError(f"expected {len(table.label_sets)} probabilities, got shape {probabilities.shape}")
    return probabilities @ table.membership()


def balanced_probabilities(
    table: LabelSetTable, min_prevalence: float = DEFAULT_MIN_PREVALENCE, max_rounds: int = 500
) -> np.ndarray:
    """`S,` sampling probabilities that keep the real label sets but lift every class to >= `min_prevalence`.

    Iterative multiplicative reweighting: each round, every class below the target gets a factor
    (target * 1.02) / prevalence, each label set is multiplied by the largest factor among its classes,
    and the weights are renormalised. Sets of frequent classes only shrink through renormalisation, so
    co-occurrence patterns inside the rare classes' sets stay as observed.
    """
    if not 0.0 < min_prevalence * NUM_CLASSES <= 1.0:
        raise ValueError(f"min_prevalence must be in (0, 1/{NUM_CLASSES}], got {min_prevalence}")
    membership = table.membership()
    present = membership.any(axis=0)
    if not present.all():
        missing = [int(c) for c in np.flatnonzero(~present)]
        raise BalancingError(f"classes {missing} occur in no label set of the table; cannot lift them")
    weights = table.frequencies().copy()
    for _ in range(max_rounds):
        prevalence = weights @ membership
        if prevalence.min() >= min_prevalence:
            return weights
        factor = np.where(
            prevalence < min_prevalence, min_prevalence * 1.02 / np.maximum(prevalence, 1e-12), 1.0
        )
        per_set = np.max(np.where(membership > 0, factor[None, :], 1.0), axis=1)
        weights = weights * per_set
        weights /= weights.sum()
    prevalence = weights @ membership
    worst = int(np.argmin(prevalence))
    raise BalancingError(
        f"balancing did not converge in {max_rounds} rounds: class {worst} at {prevalence[worst]:.4f} "
        f"< {min_prevalence}"
    )


class LabelSetSampler:
    """Draws image label sets from a table, with real or balanced probabilities."""

    def __init__(
        self, table: LabelSetTable, balanced: bool = False, min_prevalence: float = DEFAULT_MIN_PREVALENCE
    ) -> None:
        self.table = table
        self.balanced = balanced
        self.probabilities = (
            balanced_probabilities(table, min_prevalence) if balanced else table.frequencies()
        )
        self._cumulative = np.cumsum(self.probabilities)

    def sample(self, rng: np.random.Generator) -> tuple[int, ...]:
        """One label set (sorted class ids), using exactly one uniform draw from `rng`."""
        index = int(np.searchsorted(self._cumulative, rng.random() * self._cumulative[-1], side="right"))
        return self.table.label_sets[min(index, len(self.table.label_sets) - 1)]

    def prevalence(self) -> np.ndarray:
        """`28,` expected fraction of sampled images holding each class."""
        return expected_prevalence(self.table, self.probabilities)
