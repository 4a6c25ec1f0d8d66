"""Per-cell labels for the cells of a cache, for cell-supervised training (the upper bound of MIL).

The file is a CSV with columns `image_id`, `cell_id`, `labels` (space-separated 2018 class ids, empty = none),
the layout of the synthetic generator's `cells.csv`. Cell ids are the ids of the cache's cell masks, so the
labels only mean something for a cache segmented with the same masks (`segment.py --segmenter masks`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hpa_cells.cache import CellCache
from hpa_cells.classes import NUM_CLASSES
from hpa_cells.metrics import parse_cell_label_csv


class CellLabelError(ValueError):
    """A per-cell label file that is malformed or does not cover the cache's cells."""


def read_cell_labels(path: Path) -> dict[str, dict[int, tuple[int, ...]]]:
    """image id -> {cell id: class ids}, from a per-cell label CSV; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise CellLabelError(f"per-cell label file not found: {path}")
    return parse_cell_label_csv(path, CellLabelError)


def cell_label_matrix(cache: CellCache, labels: dict[str, dict[int, tuple[int, ...]]], source: str,
                      image_indices: np.ndarray | None = None) -> np.ndarray:
    """`num_cells,K` float32 multi-hot labels in the cache's cell order. Every cell of `image_indices` (default:
    all images) must have an entry; other cells get zeros."""
    table = cache.cell_table()
    matrix = np.zeros((len(table), NUM_CLASSES), dtype=np.float32)
    wanted = None if image_indices is None else set(int(i) for i in image_indices)
    for row, (image_id, image_index, cell_id) in enumerate(
            zip(table["image_id"], table["image_index"], table["cell_id"], strict=True)):
        if wanted is not None and int(image_index) not in wanted:
            continue
        classes = labels.get(str(image_id), {}).get(int(cell_id))
        if classes is None:
            raise CellLabelError(f"{source} has no labels for cell {int(cell_id)} of image {image_id!r} in "
                                 f"{cache.path}; cell ids must be the cache's (segment with --segmenter masks)")
        matrix[row, list(classes)] = 1.0
    return matrix
