"""What a training run checks about its --out folder and its data before it loads or trains anything.

- The cache's identity: a sha256 over its index (image ids, cell counts, labels, crop size, provenance; not the
  crops, so it costs no more than opening the file) and, with `TrainConfig.labels`, the label file's sha256. A
  checkpoint records both; a resumed run on a cache whose content changed is refused saying so (a cache moved to
  another path with the same content resumes).
- The settings comparison (`settings_differences`): every model and training setting in which the checkpoint's
  run differs from this one, named as "head: 'x' in the folder, 'y' now". It runs on the checkpoint's JSON state
  before any weights are read, so another head or encoder is named instead of failing on tensor shapes.
- A folder holding a finished model (weights.safetensors) is never trained over silently: `check_out_folder`
  refuses it unless the run continues its checkpoint with more epochs, or `overwrite` is given.
- Label files (`label_override`): the cache's image labels replaced by a CSV's, the cache left as it is.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np

from hpa_cells.cache import CellCache
from hpa_cells.checkpoints import checkpoint_exists, read_checkpoint_state
from hpa_cells.file_hashes import sha256_of_file
from hpa_cells.labels import read_labels, to_multi_hot
from mil.training.config import SETTINGS_ADDED_LATER, TrainConfig, TrainingError

logger = logging.getLogger(__name__)

STANDARDISATION = ("channel_mean", "channel_std")
"""Model settings measured on the training cells: equal when the cache is, so compared only after measuring."""


def cache_content_sha256(cache: CellCache) -> str:
    """A sha256 over the cache's index: image ids, cell counts, labels, crop size and provenance."""
    digest = hashlib.sha256()
    digest.update(json.dumps([cache.image_ids, cache.crop_size, cache.provenance], default=str,
                             sort_keys=True).encode())
    table = cache.image_table()
    for values in (table["count"].to_numpy(np.int64), cache.labels.astype(np.uint8), cache.has_labels):
        digest.update(np.ascontiguousarray(values).tobytes())
    return digest.hexdigest()


def cache_identity(cache_path: Path, config: TrainConfig) -> dict:
    """{"path", "content_sha256", "labels", "labels_sha256"}: what a checkpoint remembers of the data."""
    with CellCache(cache_path) as cache:
        content = cache_content_sha256(cache)
    labels_sha = sha256_of_file(Path(config.labels)) if config.labels is not None else None
    return {"path": str(cache_path), "content_sha256": content, "labels": config.labels, "labels_sha256": labels_sha}


def label_override(cache: CellCache, labels_path: str) -> tuple[np.ndarray, np.ndarray]:
    """(labels `M,28` uint8, has_labels `M` bool) of the cache's images from the label file: images it does not
    list are unlabelled. TrainingError when it lists none of them; LabelFileError for a malformed file."""
    labels = read_labels(labels_path)
    ids = cache.image_ids
    listed = np.array([image_id in labels for image_id in ids], dtype=bool)
    if not listed.any():
        raise TrainingError(f"--labels {labels_path}: none of its {len(labels)} image ids is in {cache.path} "
                            f"(e.g. {', '.join(list(labels)[:3])}; the cache has e.g. {', '.join(ids[:3])})")
    matrix = to_multi_hot([labels.get(image_id, ()) for image_id in ids])
    missing = [image_id for image_id, found in zip(ids, listed, strict=True) if not found]
    extra = len(set(labels) - set(ids))
    logger.info("labels from %s for %d of the cache's %d images%s%s", labels_path, int(listed.sum()), len(ids),
                f"; {len(missing)} not listed are left out as unlabelled (e.g. {', '.join(missing[:3])})"
                if missing else "", f"; {extra} listed ids are not in the cache" if extra else "")
    return matrix.astype(np.uint8), listed


def _differences(stored: dict, now: dict, skip: tuple[str, ...] = ()) -> list[str]:
    return [f"{key}: {stored.get(key)!r} in the folder, {now.get(key)!r} now"
            for key in sorted(set(stored) | set(now)) if key not in skip and stored.get(key) != now.get(key)]


def settings_differences(stored: dict, now: dict, with_standardisation: bool = True) -> list[str]:
    """Every model and training setting (epochs excepted) in which the checkpoint's `stored` settings differ from
    `now`; training settings added later read as their old defaults. The cache is compared apart
    (`cache_difference`)."""
    skip = () if with_standardisation else STANDARDISATION
    training = {**SETTINGS_ADDED_LATER, **stored.get("training", {})}
    return (_differences(stored.get("model", {}), now["model"], skip)
            + _differences(training, now["training"], ("epochs",)))


def cache_difference(stored: dict | None, now: dict) -> str | None:
    """How the data changed since the checkpoint's run started, or None (also for a checkpoint from before caches
    were recorded)."""
    if not stored:
        return None
    if stored.get("content_sha256") != now["content_sha256"]:
        where = (f"the cache {now['path']} changed" if stored.get("path") == now["path"] else
                 f"the cache changed from {stored.get('path')} to {now['path']}")
        return (f"{where} since the run started (content sha256 {str(stored.get('content_sha256'))[:12]}... "
                f"then, {now['content_sha256'][:12]}... now)")
    if stored.get("labels_sha256") != now["labels_sha256"]:
        return (f"the labels changed since the run started ({stored.get('labels') or 'the cache labels'} then, "
                f"{now['labels'] or 'the cache labels'} now, or the file's content)")
    return None


def check_settings(checkpoint_dir: Path, stored: dict, now: dict, with_standardisation: bool = True) -> None:
    """TrainingError naming every difference between the checkpoint's settings and this run's."""
    changed = cache_difference(stored.get("cache"), now["cache"])
    differences = settings_differences(stored, now, with_standardisation)
    if changed and not differences:
        raise TrainingError(f"{checkpoint_dir.parent}: {changed}; rerun on the same data to resume, or choose a "
                            "new --out folder")
    if differences:
        raise TrainingError(
            f"{checkpoint_dir} was written by a run with other settings; resume with the same settings (only "
            f"--epochs may change) or choose a new --out folder. Differences: {'; '.join(differences)}"
            + (f"; {changed}" if changed else ""))


def finished_reason(state: dict, config: TrainConfig) -> str | None:
    """Why the checkpoint's run has nothing left to train (all epochs run, or stopped early), or None."""
    if state.get("stale_epochs", 0) >= config.patience:
        return f"stopped early after {state.get('epoch')} epochs"
    if state.get("epoch", 0) >= config.epochs:
        return f"trained for {state.get('epoch')} epochs"
    return None


def check_out_folder(out_dir: Path, config: TrainConfig, overwrite: bool) -> dict | None:
    """Before anything is loaded: the checkpoint state to resume from (checked by the caller), or None for a
    fresh run. TrainingError when `out_dir` holds a finished model that this run would replace (unless
    `overwrite`: then nothing is resumed)."""
    if overwrite:
        return None
    checkpoint_dir = out_dir / "checkpoint"
    finished = (out_dir / "weights.safetensors").is_file()
    state = read_checkpoint_state(checkpoint_dir) if checkpoint_exists(checkpoint_dir) else None
    if finished and state is None:
        raise TrainingError(f"{out_dir} holds a finished model (weights.safetensors) and no checkpoint to "
                            "continue it from; pass --overwrite to train it again from scratch, or choose another "
                            "--out")
    return state


def refuse_finished(out_dir: Path, state: dict, config: TrainConfig) -> None:
    """TrainingError when `out_dir` holds a finished model whose checkpoint has nothing left to train."""
    reason = finished_reason(state, config)
    if (out_dir / "weights.safetensors").is_file() and reason is not None:
        raise TrainingError(f"{out_dir} holds a finished model ({reason}); rerun with more --epochs to continue "
                            "it, pass --overwrite to train it again from scratch, or choose another --out")


class RelabelledImages:
    """A training dataset whose images carry the labels of a label file (`label_override`) instead of the
    cache's: `labels` and every item's `labels` come from `matrix` (`M,28` over the cache's images); everything
    else is the wrapped dataset's."""

    def __init__(self, dataset, matrix: np.ndarray) -> None:
        self.dataset = dataset
        self.matrix = matrix.astype(np.float32)
        self.labels = self.matrix[list(dataset.image_indices)]

    def __getattr__(self, name: str):
        if name in ("dataset", "matrix"):  # not set yet (unpickling): never recurse
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: int):
        import dataclasses

        import torch

        bag = self.dataset[item]
        return dataclasses.replace(bag, labels=torch.from_numpy(self.matrix[bag.image_index].copy()))
