"""Image-level label updates of a cell cache: labels are data, not segmentation, so a label file given to a later
run (or to `hpa-cells relabel`, or to a merge of shard caches) replaces the stored labels of the images it names.

Both the writer's journal merge (`hpa_cells.cache.writer`) and the merge of shard caches (`hpa_cells.cache.merging`)
apply them to the merged copy before it replaces the main file, under the same crash safety.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import h5py
import numpy as np

from hpa_cells.cache.schema import read_strings

__all__ = ["apply_label_updates", "label_rows", "labels_would_change"]


def label_rows(labels: Mapping[str, Sequence[int]]) -> dict[str, np.ndarray]:
    """Image id -> class ids, as image id -> 28-long uint8 multi-hot row (the stored form)."""
    from hpa_cells.labels import to_multi_hot

    ids = list(labels)
    matrix = to_multi_hot([labels[i] for i in ids]) if ids else np.zeros((0, 0), np.uint8)
    return {image_id: matrix[row] for row, image_id in enumerate(ids)}


def apply_label_updates(f: h5py.File, updates: Mapping[str, np.ndarray] | None) -> int:
    """Write `updates` (image id -> multi-hot row) into open cache `f`; the number of images whose labels changed.
    Images not in `updates` keep theirs."""
    if not updates:
        return 0
    ids = read_strings(f["images/id"])
    labels, has = f["images/labels"][:], f["images/has_labels"][:]
    changed = 0
    for row, image_id in enumerate(ids):
        new = updates.get(image_id)
        if new is None or (has[row] and np.array_equal(labels[row], new)):
            continue
        labels[row], has[row] = new, 1
        changed += 1
    if changed:
        f["images/labels"][:] = labels
        f["images/has_labels"][:] = has
    return changed


def labels_would_change(path: Path, updates: Mapping[str, np.ndarray] | None) -> int:
    """How many images of cache file `path` (if it exists) `updates` would change (read only)."""
    if not updates or not path.exists():
        return 0
    with h5py.File(path, "r") as f:
        ids = read_strings(f["images/id"])
        labels, has = f["images/labels"][:], f["images/has_labels"][:]
    return sum(1 for row, image_id in enumerate(ids) if image_id in updates and not (
        has[row] and np.array_equal(labels[row], updates[image_id])))
