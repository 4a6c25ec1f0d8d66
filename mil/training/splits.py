"""A fixed train/validation split read from a JSON file (`TrainConfig.split_file`, `train.py --split-file`).

The file is `{"train": [image ids], "validation": [image ids]}`; other keys (e.g. a benchmark's fold number) are
ignored. It overrides `val_fraction` / `folds`: training uses exactly these images, so several models can be
trained on the same fields (a cross-validation benchmark's folds). Every id must be a labelled image of the cache;
an id may not be in both lists.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

SPLIT_KEYS = ("train", "validation")


class SplitFileError(ValueError):
    """A split file that cannot be used; the message names the file and, where one is at fault, the image id."""


def read_split_file(path: Path) -> dict[str, list[str]]:
    """{"train": ids, "validation": ids} of a split file, checked for shape (not yet against a cache)."""
    path = Path(path)
    if not path.is_file():
        raise SplitFileError(f"split file not found: {path}")
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise SplitFileError(f"{path}: not JSON ({err})") from None
    if not isinstance(content, dict) or any(key not in content for key in SPLIT_KEYS):
        raise SplitFileError(f"{path}: needs the keys 'train' and 'validation' (lists of image ids)")
    split = {}
    for key in SPLIT_KEYS:
        ids = content[key]
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
            raise SplitFileError(f"{path}: '{key}' must be a non-empty list of image id strings")
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        if repeated:
            raise SplitFileError(f"{path}: image id {repeated[0]!r} is listed twice in '{key}'")
        split[key] = list(ids)
    both = sorted(set(split["train"]) & set(split["validation"]))
    if both:
        raise SplitFileError(f"{path}: image id {both[0]!r} is in both 'train' and 'validation'")
    return split


def split_from_file(path: Path, image_ids: Sequence[str], has_labels: np.ndarray,
                    cache_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(training, validation) image indices of the cache `cache_path` (its `image_ids` and `has_labels`) that the
    split file names, each sorted. SplitFileError naming the id and both files for an id the cache lacks or holds
    without labels."""
    split = read_split_file(path)
    index_of = {image_id: i for i, image_id in enumerate(image_ids)}
    out = []
    for key in SPLIT_KEYS:
        indices = []
        for image_id in split[key]:
            if image_id not in index_of:
                raise SplitFileError(f"{path}: image id {image_id!r} (in '{key}') is not in the cache {cache_path}")
            if not has_labels[index_of[image_id]]:
                raise SplitFileError(f"{path}: image id {image_id!r} (in '{key}') has no labels in the cache "
                                     f"{cache_path}")
            indices.append(index_of[image_id])
        out.append(np.sort(np.asarray(indices, dtype=np.int64)))
    return out[0], out[1]
