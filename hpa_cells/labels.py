"""Image-level label files: the 2018 (`Id,Target`) and 2021 (`ID,Label`) schemes, multi-hot arrays,
and the Kaggle submission format.

Inside the project an image's labels are a sorted tuple of 2018 class ids (0-27); an empty tuple means
"no localization" (2021 "Negative"). Files are parsed strictly: every problem raises `LabelFileError`
naming the file and the line, so a bad row is found in seconds rather than after a day of training.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from hpa_cells.atomic_files import atomic_output
from hpa_cells.classes import (
    NEGATIVE_2021,
    NUM_CLASSES,
    NUM_CLASSES_2021,
    AmbiguousMapping,
    map_2021_to_2018,
)

logger = logging.getLogger(__name__)

LabelScheme = Literal["2018", "2021"]
HEADER_2018 = ("Id", "Target")
HEADER_2021 = ("ID", "Label")
SUBMISSION_HEADER = ("Id", "Predicted")

ImageLabels = dict[str, tuple[int, ...]]
"""Image id -> sorted 2018 class ids, in file order."""


class LabelFileError(ValueError):
    """A label file that cannot be parsed; the message names the file and, where known, the line."""


@dataclass(frozen=True)
class LabelImageMatch:
    """How the ids of a label file line up with the images found on disk."""

    matched: tuple[str, ...]
    labels_without_images: tuple[str, ...]
    images_without_labels: tuple[str, ...]

    def summary(self) -> str:
        return (
            f"{len(self.matched)} images with labels, {len(self.labels_without_images)} labelled ids "
            f"without images, {len(self.images_without_labels)} images without labels"
        )


def detect_scheme(path: str | os.PathLike[str]) -> LabelScheme:
    """Which scheme a label file uses, from its header line."""
    path = Path(path)
    header, _ = _read_header(path)
    return _scheme_of_header(path, header)


def read_labels(
    path: str | os.PathLike[str],
    scheme: LabelScheme | Literal["auto"] = "auto",
    ambiguous: AmbiguousMapping = "all",
) -> ImageLabels:
    """Read a label file of either scheme into image id -> sorted 2018 class ids.

    2021 files are mapped onto the 28 classes with `classes.map_2021_to_2018` (`ambiguous` picks how the
    2021 classes that merge several 2018 classes are mapped); "Negative" becomes an empty tuple.
    """
    path = Path(path)
    header, rows = _read_header(path)
    found = _scheme_of_header(path, header)
    if scheme != "auto" and scheme != found:
        raise LabelFileError(
            f"{path}, line 1: header {','.join(header)!r} is the {found} scheme, but the {scheme} scheme "
            f"was requested (expected {','.join(HEADER_2018 if scheme == '2018' else HEADER_2021)!r})"
        )
    labels: ImageLabels = {}
    first_line: dict[str, int] = {}
    for line_no, row in rows:
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # blank line
        if len(row) != 2:
            raise LabelFileError(
                f"{path}, line {line_no}: malformed row {','.join(row)!r}: expected 2 comma-separated "
                f"fields ({','.join(header)}), got {len(row)}"
            )
        image_id, field = row[0].strip(), row[1].strip()
        if not image_id:
            raise LabelFileError(f"{path}, line {line_no}: empty image id")
        if image_id in first_line:
            raise LabelFileError(
                f"{path}, line {line_no}: duplicate image id {image_id!r} (first seen on line {first_line[image_id]})"
            )
        first_line[image_id] = line_no
        if found == "2018":
            labels[image_id] = _parse_2018_field(path, line_no, image_id, field)
        else:
            labels[image_id] = _parse_2021_field(path, line_no, image_id, field, ambiguous)
    if not labels:
        raise LabelFileError(f"{path}: no label rows after the header")
    logger.info("read %d image labels (%s scheme) from %s", len(labels), found, path)
    return labels


def _read_header(path: Path) -> tuple[tuple[str, ...], list[tuple[int, list[str]]]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise LabelFileError(f"{path}: label file not found") from None
    except UnicodeDecodeError as err:
        raise LabelFileError(f"{path}: not a UTF-8 text file ({err.reason} at byte {err.start})") from None
    if not text.strip():
        raise LabelFileError(
            f"{path}: empty label file (expected a header {','.join(HEADER_2018)!r} or {','.join(HEADER_2021)!r})"
        )
    reader = csv.reader(text.splitlines())
    header = tuple(field.strip() for field in next(reader))
    rows = [(reader.line_num, row) for row in reader]
    return header, rows


def _scheme_of_header(path: Path, header: tuple[str, ...]) -> LabelScheme:
    if header == HEADER_2018:
        return "2018"
    if header == HEADER_2021:
        return "2021"
    raise LabelFileError(
        f"{path}, line 1: unexpected header {','.join(header)!r}; expected {','.join(HEADER_2018)!r} "
        f"(2018 scheme) or {','.join(HEADER_2021)!r} (2021 scheme)"
    )


def _parse_ids(path: Path, line_no: int, image_id: str, tokens: list[str], n_classes: int) -> list[int]:
    ids = []
    for token in tokens:
        try:
            value = int(token)
        except ValueError:
            raise LabelFileError(
                f"{path}, line {line_no}: label {token!r} of image {image_id!r} is not an integer class id"
            ) from None
        if not 0 <= value < n_classes:
            raise LabelFileError(
                f"{path}, line {line_no}: unknown class id {value} for image {image_id!r}; "
                f"valid ids are 0-{n_classes - 1}"
            )
        ids.append(value)
    return ids


def _parse_2018_field(path: Path, line_no: int, image_id: str, field: str) -> tuple[int, ...]:
    return tuple(sorted(set(_parse_ids(path, line_no, image_id, field.split(), NUM_CLASSES))))


def _parse_2021_field(
    path: Path, line_no: int, image_id: str, field: str, ambiguous: AmbiguousMapping
) -> tuple[int, ...]:
    tokens = [t.strip() for t in field.split("|")] if field else []
    if any(not t for t in tokens):
        raise LabelFileError(f"{path}, line {line_no}: empty label between '|' separators for image {image_id!r}")
    ids_2021 = _parse_ids(path, line_no, image_id, tokens, NUM_CLASSES_2021)
    if NEGATIVE_2021 in ids_2021 and len(set(ids_2021)) > 1:
        raise LabelFileError(
            f"{path}, line {line_no}: image {image_id!r} is labelled Negative ({NEGATIVE_2021}) together "
            f"with other classes {sorted(set(ids_2021) - {NEGATIVE_2021})}"
        )
    mapped = {c18 for c21 in ids_2021 for c18 in map_2021_to_2018(c21, ambiguous)}
    return tuple(sorted(mapped))


def to_multi_hot(label_sets: Iterable[Iterable[int]], num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Label sets -> `N,num_classes` uint8 multi-hot matrix."""
    sets = [tuple(s) for s in label_sets]
    matrix = np.zeros((len(sets), num_classes), dtype=np.uint8)
    for row, ids in enumerate(sets):
        for class_id in ids:
            if not 0 <= class_id < num_classes:
                raise ValueError(f"label set {row}: class id {class_id} outside 0-{num_classes - 1}")
            matrix[row, class_id] = 1
    return matrix


def from_multi_hot(matrix: np.ndarray) -> list[tuple[int, ...]]:
    """`N,C` multi-hot (or boolean) matrix -> list of sorted class-id tuples."""
    matrix = np.asarray(matrix)
    if matrix.ndim != 2:
        raise ValueError(f"expected an N,C multi-hot matrix, got shape {matrix.shape}")
    if not np.isin(matrix, (0, 1)).all():
        raise ValueError("multi-hot matrix holds values other than 0 and 1; threshold probabilities first")
    return [tuple(int(c) for c in np.flatnonzero(row)) for row in matrix]


def _write_id_label_csv(
    path: str | os.PathLike[str], header: Sequence[str], labels: Mapping[str, Iterable[int]]
) -> Path:
    path = Path(path)
    with atomic_output(path) as partial, partial.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        for image_id, ids in labels.items():
            values = sorted({int(c) for c in ids})
            bad = [c for c in values if not 0 <= c < NUM_CLASSES]
            if bad:
                raise ValueError(f"image {image_id!r}: class ids {bad} outside 0-{NUM_CLASSES - 1}")
            writer.writerow((image_id, " ".join(str(c) for c in values)))
    return path


def write_labels_2018(path: str | os.PathLike[str], labels: Mapping[str, Iterable[int]]) -> Path:
    """Write a 2018-scheme label file (`Id,Target`, space-separated ids), atomically."""
    return _write_id_label_csv(path, HEADER_2018, labels)


def write_submission(path: str | os.PathLike[str], predictions: Mapping[str, Iterable[int]]) -> Path:
    """Write predicted label sets in the 2018 Kaggle submission format (`Id,Predicted`), atomically.

    An image with no predicted class gets an empty `Predicted` field, as Kaggle accepts.
    """
    return _write_id_label_csv(path, SUBMISSION_HEADER, predictions)


def match_labels_to_images(labels: Mapping[str, object], image_ids: Iterable[str]) -> LabelImageMatch:
    """Line up labelled ids with the image ids found on disk and log what does not match."""
    image_set = set(image_ids)
    matched = tuple(i for i in labels if i in image_set)
    labels_only = tuple(i for i in labels if i not in image_set)
    images_only = tuple(sorted(image_set - set(labels)))
    if labels_only:
        logger.warning(
            "%d labelled ids have no images, e.g. %s", len(labels_only), ", ".join(labels_only[:5])
        )
    if images_only:
        logger.warning("%d images have no labels, e.g. %s", len(images_only), ", ".join(images_only[:5]))
    return LabelImageMatch(matched, labels_only, images_only)
