"""Reading a prediction folder (the one reader; maps, the report, the exports and evaluation use it).

`read_prediction_folder(path)` returns a `PredictionFolder`; each table is read and checked the first time it
is asked for, so a tool that needs only cells.csv (the exports) does not require images.csv, and the first
missing file a tool needs is the one its error names. Every problem is a `PredictionFolderError` naming the file,
and the line for a damaged row (a cut row, a number that is not one, a bad `predicted` field). A table that does
not end with a line end was cut mid-row (the writer always ends one), and a table whose row count differs from
the manifest's `n_images` / `n_cells` was cut at a row end or replaced: both are refused too.

Folders written before a manifest entry existed still read: no `cell_score` means the cells' own probabilities
(`cell`), no `models` means the single `model`, no `pixel_maps` means none.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from hpa_cells.classes import CLASS_NAMES, NUM_CLASSES
from hpa_cells.pixel_maps import PIXEL_MAPS_FILE
from hpa_cells.predictions.records import (
    ATTENTION_FILE,
    CELL_COLUMNS,
    CELL_NUMBERS,
    CELLS_FILE,
    IMAGE_COLUMNS,
    IMAGE_NUMBERS,
    IMAGES_FILE,
    LEGACY_CELL_SCORE,
    MANIFEST_FILE,
    TEXT_COLUMNS,
    PredictionFolderError,
    parse_predicted_ids,
    require_cell_score_of,
)

_FIRST_DATA_LINE = 2
"""CSV line number of a table's first row (line 1 is the header)."""


def _require_line_end(path: Path) -> None:
    """PredictionFolderError naming the file and its last line unless the file ends with a line end: the writer
    always ends a table with one, so a file without it was cut mid-row (perhaps inside its last number, which
    would otherwise still read as a number)."""
    with path.open("rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return  # an empty file: the parser's own error below
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return
        handle.seek(0)
        lines = sum(1 for _ in handle)
    raise PredictionFolderError(f"{path}, line {lines}: the file ends mid-row (no line end after the last row: "
                                "cut while copying or writing?)")


def _read_table(path: Path, required: Sequence[str], numbers: Sequence[str]) -> pd.DataFrame:
    """A CSV of the folder with `required` columns, every `numbers` column numeric in every row, ending with a
    line end (else it was cut mid-row)."""
    if not path.is_file():
        raise PredictionFolderError(f"{path.parent} is not a prediction folder: {path.name} is missing")
    _require_line_end(path)
    try:
        frame = pd.read_csv(path, dtype=TEXT_COLUMNS, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise PredictionFolderError(f"{path}: not a readable table ({error})") from error
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise PredictionFolderError(f"{path}: missing columns {missing[:6]}")
    for column in numbers:
        if pd.api.types.is_numeric_dtype(frame[column]):
            values = frame[column]
        else:
            values = pd.to_numeric(frame[column], errors="coerce")
        bad = np.flatnonzero(values.isna().to_numpy())
        if bad.size:
            row = int(bad[0])
            raise PredictionFolderError(
                f"{path}, line {row + _FIRST_DATA_LINE}: {column} is {frame[column].iloc[row]!r}, not a number "
                "(a cut or damaged row?)")
        frame[column] = values
    return frame


class PredictionFolder:
    """A prediction folder opened for reading (see `hpa_cells.predictions.writer` for its files).

    Attributes read on first use: `manifest` (dict), `images` (images.csv with a `predicted_ids` column of
    tuples), `cells` (cells.csv), `thresholds` (`K` floats), `cell_score` (a key of `CELL_SCORES`).
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)

    def __repr__(self) -> str:
        return f"PredictionFolder({str(self.folder)!r})"

    @property
    def manifest_path(self) -> Path:
        return self.folder / MANIFEST_FILE

    @property
    def has_manifest(self) -> bool:
        return self.manifest_path.is_file()

    @cached_property
    def manifest(self) -> dict:
        path = self.manifest_path
        if not path.is_file():
            raise PredictionFolderError(f"{self.folder} is not a prediction folder: {MANIFEST_FILE} is missing")
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise PredictionFolderError(f"{path}: invalid JSON ({error})") from error
        if not isinstance(record, dict):
            raise PredictionFolderError(f"{path}: expected a JSON object, found {type(record).__name__}")
        return record

    def _require_rows(self, path: Path, frame: pd.DataFrame, count_key: str) -> None:
        """PredictionFolderError when the manifest records another row count for the table (a file cut at a row
        end, or replaced); folders without a manifest or without the count are not checked."""
        if not self.has_manifest or count_key not in self.manifest:
            return
        expected = self.manifest[count_key]
        if isinstance(expected, int) and expected != len(frame):
            raise PredictionFolderError(f"{path}: {len(frame)} rows but {self.manifest_path} records {count_key} "
                                        f"{expected} (a cut or replaced file?)")

    @cached_property
    def images(self) -> pd.DataFrame:
        path = self.folder / IMAGES_FILE
        frame = _read_table(path, IMAGE_COLUMNS, IMAGE_NUMBERS)
        self._require_rows(path, frame, "n_images")
        frame["predicted_ids"] = [parse_predicted_ids(text, f"{path}, line {row + _FIRST_DATA_LINE}")
                                  for row, text in enumerate(frame["predicted"])]
        return frame

    @cached_property
    def cells(self) -> pd.DataFrame:
        path = self.folder / CELLS_FILE
        frame = _read_table(path, CELL_COLUMNS, CELL_NUMBERS)
        self._require_rows(path, frame, "n_cells")
        return frame

    @property
    def unpredicted(self) -> dict[str, str]:
        """image id -> reason of the fields that have no prediction (skipped while segmenting, or without
        cells): submission.csv lists them with an empty prediction; images.csv and cells.csv do not. Folders
        written before this was recorded: empty."""
        rows = self.manifest.get("unpredicted") or []
        try:
            return {str(row["image_id"]): str(row.get("reason", "")) for row in rows}
        except (TypeError, KeyError, AttributeError):
            raise PredictionFolderError(f"{self.manifest_path}: 'unpredicted' must list objects with an "
                                        "'image_id'") from None

    @cached_property
    def thresholds(self) -> np.ndarray:
        """The `K` per-class thresholds of the image predictions (manifest `thresholds`)."""
        thresholds = self.manifest.get("thresholds", [])
        try:
            values = np.asarray(thresholds, dtype=np.float64)
        except (TypeError, ValueError):
            values = np.zeros(0)
        if values.shape != (NUM_CLASSES,):
            raise PredictionFolderError(f"{self.manifest_path}: 'thresholds' must list {NUM_CLASSES} values")
        return values

    @cached_property
    def cell_score(self) -> str:
        """What cells.csv's class probabilities are; folders written before it was recorded hold `cell`."""
        return require_cell_score_of(self.manifest.get("cell_score", LEGACY_CELL_SCORE), self.manifest_path)

    @property
    def image_ids(self) -> list[str]:
        return list(self.images["image_id"])

    @property
    def cache_path(self) -> Path | None:
        """The cell cache the predictions were made from (as recorded; None when not recorded)."""
        recorded = self.manifest.get("cache")
        return Path(recorded) if recorded else None

    @property
    def model_folders(self) -> list[str]:
        """Every model folder of the run (several = an ensemble); old folders record only `model`."""
        folders = self.manifest.get("models") or ([self.manifest["model"]] if self.manifest.get("model") else [])
        if not folders:
            raise PredictionFolderError(f"{self.manifest_path}: no 'model' or 'models' entry")
        return [str(f) for f in folders]

    @property
    def attention_path(self) -> Path:
        """attention.h5 (`attention` `C,A`, rows as in cells.csv)."""
        return self.folder / ATTENTION_FILE

    @property
    def pixel_maps_path(self) -> Path | None:
        """The dense models' pixel-map file, when the manifest names one and it is there."""
        path = self.folder / PIXEL_MAPS_FILE
        return path if self.manifest.get("pixel_maps") and path.is_file() else None

    def cell_probabilities(self, image_ids: Iterable[str] | None = None) -> dict[str, dict[int, np.ndarray]]:
        """image id -> {cell id: `K` class probabilities} (of `image_ids` only, when given)."""
        cells = self.cells
        if image_ids is not None:
            cells = cells[cells["image_id"].isin(set(image_ids))]
        return probs_by_cell(cells)


def probs_by_cell(cells: pd.DataFrame) -> dict[str, dict[int, np.ndarray]]:
    """image id -> {cell id: `K` probabilities} from a cells.csv table (class-name columns)."""
    probs = cells[list(CLASS_NAMES)].to_numpy(dtype=np.float64)
    out: dict[str, dict[int, np.ndarray]] = {}
    for image_id, cell_id, row in zip(cells["image_id"], cells["cell_id"], probs, strict=True):
        out.setdefault(str(image_id), {})[int(cell_id)] = row
    return out


def read_prediction_folder(folder: str | os.PathLike[str] | PredictionFolder) -> PredictionFolder:
    """The prediction folder at `folder` (tables read on first use); a `PredictionFolder` is returned as is."""
    return folder if isinstance(folder, PredictionFolder) else PredictionFolder(folder)
