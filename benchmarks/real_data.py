"""The real fields of the real-data benchmark (`bench_real.py`): finding them, segmenting them at a 2018-like
scale into a cell cache, and the fixed cross-validation folds.

Fields: the 58 fields of `hpa2018_real58` (512 px, 2018 labels) and the 5 of `hpa2021_subset` (2048 or 3072 px,
2021 labels mapped onto the 2018 classes by `hpa_cells.labels.read_labels`). The 2018 fields are the 2048 px
originals shrunk 4x, so every 2021 field is shrunk 4x too (2048 -> 512, 3072 -> 768): its cells then have the
2018 fields' pixel size (the 3072 px field shows a larger area at the same pixel size: its HPA reference cells
are as large as the 2048 px fields' ones). One `segment_folder` job resizes every image to one working size, so
the fields are segmented here image by image, with the same segmenter, crops and cache writer.

Folds: 5-fold multilabel-stratified (iterstrat's MultilabelStratifiedKFold, seeded) over all fields, and inside
each fold's training fields a stratified inner validation split (early stopping and thresholds). They are made
once and saved (`benchmarks/results/real_folds.json`); a later run with another field set or other labels is
refused rather than silently given new folds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REAL_SOURCES = ("hpa2018_real58", "hpa2021_subset")
SHRINK_2021 = 4
"""2021 fields are shrunk by this factor: the 2018 fields are the 2048 px originals shrunk 4x."""


class RealDataError(ValueError):
    """Real data that is missing or inconsistent; the message names the folder or file."""


class FoldsFileError(ValueError):
    """A saved folds file that does not fit the fields or the options of this run."""


@dataclass(frozen=True)
class RealField:
    """One labelled real field: its channel files, labels (2018 class ids), source folder and shrink factor."""

    image_id: str
    files: dict[str, Path]
    labels: tuple[int, ...]
    source: str
    shrink: int


def find_real_fields(data: Path) -> list[RealField]:
    """Every labelled real field under `data` (the folder holding hpa2018_real58/ and hpa2021_subset/), sorted
    by id. RealDataError when a folder, its labels.csv or a labelled field's channels are missing."""
    from hpa_cells.images import scan_folder
    from hpa_cells.labels import read_labels

    fields = []
    for source, images, shrink in ((REAL_SOURCES[0], "", 1), (REAL_SOURCES[1], "images", SHRINK_2021)):
        folder = data / source
        labels_path = folder / "labels.csv"
        if not labels_path.is_file():
            raise RealDataError(f"{labels_path} not found: --data (or $HPA_REAL_DATA) must be the folder holding "
                                f"{' and '.join(REAL_SOURCES)}")
        labels = read_labels(labels_path)
        scan = scan_folder(folder / images)
        missing = sorted(set(labels) - set(scan.complete))
        if missing:
            raise RealDataError(f"{folder / images}: labelled field {missing[0]} has no complete set of four "
                                f"channels ({len(missing)} such fields)")
        fields += [RealField(i, scan.complete[i], tuple(labels[i]), source, shrink) for i in labels]
    ids = [f.image_id for f in fields]
    if len(set(ids)) != len(ids):
        raise RealDataError(f"{data}: an image id occurs in both {' and '.join(REAL_SOURCES)}")
    return sorted(fields, key=lambda f: f.image_id)


def read_field(field: RealField) -> tuple[np.ndarray, tuple[int, int]]:
    """(the field at its working size `4,H,W` uint8, its original `H,W`)."""
    from hpa_cells.images import read_sample_files, resize_image

    image = read_sample_files(field.files, sample_id=field.image_id, size=None)
    original = (int(image.shape[1]), int(image.shape[2]))
    if field.shrink != 1:
        image = resize_image(image, (original[0] // field.shrink, original[1] // field.shrink))
    return image, original


def segment_fields(fields: Sequence[RealField], cache_path: Path, segmenter, crop) -> dict:
    """Segment `fields` (each at its working size) into the cell cache `cache_path` with `segmenter` and the
    `hpa_cells.crops.CropConfig` `crop`; fields already in the cache are skipped (resumable). Returns counts."""
    from tqdm import tqdm

    from hpa_cells.cache import CacheProvenance, CellCacheWriter
    from hpa_cells.crops import extract_cell_crops
    from hpa_cells.labels import to_multi_hot
    from hpa_cells.qc_flags import QC_FLAG_BITS

    provenance = segmenter.provenance()
    model = provenance.get("cell_model")
    parameters = {**provenance, "working_size": f"2018 fields as they are; 2021 fields shrunk {SHRINK_2021}x",
                  "crop": crop.__dict__, "fields": "bench_real: " + " + ".join(REAL_SOURCES)}
    cache_provenance = CacheProvenance(segmenter=segmenter.name, parameters=parameters,
                                       model_sha256=str(model.get("sha256", "")) if isinstance(model, dict) else "")
    started, counts = time.time(), {"segmented": 0, "already_done": 0, "no_cells": 0, "cells": 0}
    with CellCacheWriter(cache_path, crop.crop_size, cache_provenance, QC_FLAG_BITS) as writer:
        done = writer.done_image_ids()
        todo = [f for f in fields if f.image_id not in done]
        counts["already_done"] = len(fields) - len(todo)
        for field in tqdm(todo, desc=f"segment {cache_path.name}", unit="field"):
            image, original = read_field(field)
            result = segmenter.segment_batch([image])[0]
            if result.n_cells == 0:
                writer.add_skipped(field.image_id, "no cells found")
                counts["no_cells"] += 1
                continue
            flags = dict(zip(result.qc.cell_id.tolist(), result.qc.flags.tolist(), strict=True))
            crops = extract_cell_crops(image, result.cells, result.nuclei, config=crop, qc_flags=flags)
            writer.add_cell_crops(field.image_id, crops, result.cells, result.nuclei, original,
                                  to_multi_hot([field.labels])[0], image_chw=image)
            counts["segmented"] += 1
            counts["cells"] += len(crops)
    counts["seconds"] = round(time.time() - started, 1)
    return counts


# ----- folds ---------------------------------------------------------------------------------------------


def make_folds(ids: Sequence[str], labels: Sequence[Sequence[int]], n_folds: int = 5, seed: int = 0,
               inner_fraction: float = 0.2) -> dict:
    """The folds file's content: each field's fold (multilabel-stratified, seeded) and, per fold, the inner
    validation fields drawn (stratified, seeded) from that fold's training fields."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold, MultilabelStratifiedShuffleSplit

    from hpa_cells.labels import to_multi_hot

    if len(ids) < 2 * n_folds:
        raise ValueError(f"{len(ids)} fields are too few for {n_folds} folds")
    y = to_multi_hot(labels)
    fold_of = np.empty(len(ids), dtype=int)
    splitter = MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for fold, (_, held_out) in enumerate(splitter.split(np.zeros((len(ids), 1)), y)):
        fold_of[held_out] = fold
    inner = {}
    for fold in range(n_folds):
        training = np.flatnonzero(fold_of != fold)
        inner_split = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=inner_fraction, random_state=seed + fold)
        _, validation = next(inner_split.split(np.zeros((training.size, 1)), y[training]))
        inner[str(fold)] = sorted(ids[i] for i in training[validation])
    return {
        "description": "bench_real.py cross-validation: each field's held-out fold; per fold, the inner validation "
                       "fields (early stopping, thresholds) taken from that fold's training fields",
        "n_folds": n_folds, "seed": seed, "inner_validation_fraction": inner_fraction,
        "fields": [{"id": i, "labels": list(map(int, lab)), "fold": int(f)}
                   for i, lab, f in zip(ids, labels, fold_of, strict=True)],
        "inner_validation": inner,
    }


def load_or_make_folds(path: Path, ids: Sequence[str], labels: Sequence[Sequence[int]], n_folds: int = 5,
                       seed: int = 0, inner_fraction: float = 0.2) -> dict:
    """The saved folds at `path`, made and saved first when the file does not exist. FoldsFileError when the
    saved folds were made for other fields, other labels or other settings (never rewritten silently)."""
    if not path.is_file():
        folds = make_folds(ids, labels, n_folds, seed, inner_fraction)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(folds, indent=1) + "\n")
        return folds
    folds = json.loads(path.read_text())
    saved = {f["id"]: tuple(f["labels"]) for f in folds["fields"]}
    current = {i: tuple(map(int, lab)) for i, lab in zip(ids, labels, strict=True)}
    problems = []
    for name, found in (("not in the saved folds", sorted(set(current) - set(saved))),
                        ("in the saved folds but not found now", sorted(set(saved) - set(current))),
                        ("with other labels now", sorted(i for i in set(saved) & set(current)
                                                         if saved[i] != current[i]))):
        if found:
            problems.append(f"{len(found)} field(s) {name} (first: {found[0]})")
    for key, value in (("n_folds", n_folds), ("seed", seed), ("inner_validation_fraction", inner_fraction)):
        if folds.get(key) != value:
            problems.append(f"{key} {folds.get(key)} saved, {value} asked")
    if problems:
        raise FoldsFileError(f"{path} was made for another set of fields or settings: {'; '.join(problems)}. Every "
                             "row of the benchmark must use the same folds: delete the file only if the field set "
                             "really changed (all rows are then rerun on new folds)")
    return folds


def fold_splits(folds: dict) -> list[dict]:
    """Per fold: {"fold", "train", "validation", "held_out"} image ids (the `train.py --split-file` content plus
    the held-out fields); train + validation are the fields of every other fold."""
    out = []
    for fold in range(folds["n_folds"]):
        validation = set(folds["inner_validation"][str(fold)])
        held_out = sorted(f["id"] for f in folds["fields"] if f["fold"] == fold)
        others = sorted(f["id"] for f in folds["fields"] if f["fold"] != fold)
        out.append({"fold": fold, "train": [i for i in others if i not in validation],
                    "validation": sorted(validation), "held_out": held_out})
    return out
