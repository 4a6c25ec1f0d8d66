"""The prediction folder: the contract between prediction and everything that reads its results.

- `records`: the `Predictions` record, `CELL_SCORES`, file names, the column lists and `predicted` format,
  `PredictionFolderError` (the one error class of a folder that cannot be read).
- `writer`: `write_prediction_folder` (the one writer; the file table is in its docstring).
- `reader`: `read_prediction_folder` -> `PredictionFolder` (the one reader).

Depends only on `hpa_cells` (no model code): maps, the report, exports and scoring read folders through it.
"""

from hpa_cells.predictions.reader import PredictionFolder, probs_by_cell, read_prediction_folder
from hpa_cells.predictions.records import (
    ATTENTION_FILE,
    CELL_COLUMNS,
    CELL_SCORES,
    CELLS_FILE,
    CELLS_PARQUET_FILE,
    IMAGE_COLUMNS,
    IMAGES_FILE,
    LEGACY_CELL_SCORE,
    MANIFEST_FILE,
    SUBMISSION_FILE,
    PredictionFolderError,
    Predictions,
    format_predicted_ids,
    parse_predicted_ids,
)
from hpa_cells.predictions.writer import write_prediction_folder

__all__ = [
    "ATTENTION_FILE",
    "CELLS_FILE",
    "CELLS_PARQUET_FILE",
    "CELL_COLUMNS",
    "CELL_SCORES",
    "IMAGES_FILE",
    "IMAGE_COLUMNS",
    "LEGACY_CELL_SCORE",
    "MANIFEST_FILE",
    "SUBMISSION_FILE",
    "PredictionFolder",
    "PredictionFolderError",
    "Predictions",
    "format_predicted_ids",
    "parse_predicted_ids",
    "probs_by_cell",
    "read_prediction_folder",
    "write_prediction_folder",
]
