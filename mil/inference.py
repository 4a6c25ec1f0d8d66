"""Prediction with a trained MIL model: image probabilities, per-cell probabilities and attention.

Every cell of an image gets its own probabilities (per-cell logits of the head); the image prediction pools
only the cells usable for training (QC flags not in the model's `exclude_flags`), falling back to all cells
when an image has none. Attention is 0 for cells left out of the pooling.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from hpa_cells.cell_cache import CellCache
from hpa_cells.classes import CLASS_NAMES
from hpa_cells.crops import CropConfig, extract_cell_crops
from mil.bags import DEFAULT_EXCLUDE_FLAGS
from mil.model import BagBatch
from mil.model_folder import LoadedModel

logger = logging.getLogger(__name__)


@dataclass
class BagInput:
    """All cells of one image: crops `N,4,S,S` uint8, masks `N,S,S` uint8, usable `N` bool, plus a per-cell
    table (cell_id, centroid_y, centroid_x, qc_flags, ... ) aligned with the crops."""

    image_id: str
    crops: np.ndarray
    masks: np.ndarray
    usable: np.ndarray
    cells: pd.DataFrame


@dataclass
class Predictions:
    """image_ids `M`; image_probs `M,K`; cell table (one row per cell, probabilities in class-name columns);
    cell_attention `C,A` (A = 1 or K) aligned with the cell table; thresholds `K`."""

    image_ids: list[str]
    image_probs: np.ndarray
    cells: pd.DataFrame
    cell_attention: np.ndarray
    thresholds: np.ndarray

    def predicted_labels(self) -> dict[str, tuple[int, ...]]:
        """Image id -> class ids whose probability reaches the class threshold."""
        hits = self.image_probs >= self.thresholds
        return {i: tuple(int(c) for c in np.flatnonzero(row)) for i, row in zip(self.image_ids, hits, strict=True)}


def _exclude_bits(flag_names: dict[str, int], names: Sequence[str]) -> int:
    lowered = {k.lower(): v for k, v in flag_names.items()}
    return sum(int(lowered[n.lower()]) for n in names if n.lower() in lowered)


def bags_from_cache(cache_path: str | os.PathLike[str], exclude_flags: Sequence[str]) -> Iterator[BagInput]:
    """Every image of a cell cache as a `BagInput`, in storage order."""
    with CellCache(cache_path) as cache:
        table = cache.cell_table()
        bits = _exclude_bits(cache.qc_flag_names, exclude_flags)
        for index, image_id in enumerate(cache.image_ids):
            rows = cache.cell_slice(index)
            cells = table.iloc[rows].reset_index(drop=True)
            crops, masks = cache.cells_of(index)
            usable = (cells["qc_flags"].to_numpy().astype(np.int64) & bits) == 0
            yield BagInput(image_id, crops, masks, usable, cells)


def bags_from_masks(fields: Iterable[tuple[str, np.ndarray, np.ndarray, np.ndarray]],
                    crop: CropConfig) -> Iterator[BagInput]:
    """Bags cut from given masks (e.g. the true masks of synthetic data): (image_id, image `4,H,W`, cells `H,W`,
    nuclei `H,W`) each; every cell is usable."""
    for image_id, image, cells_hw, nuclei_hw in fields:
        cut = extract_cell_crops(image, cells_hw, nuclei_hw, config=crop)
        table = cut.table.copy()
        table.insert(0, "image_id", image_id)
        yield BagInput(image_id, cut.crops, cut.masks, np.ones(len(cut), bool), table)


def _batched(bags: Iterable[BagInput], batch_size: int) -> Iterator[list[BagInput]]:
    batch: list[BagInput] = []
    for bag in bags:
        if len(bag.crops) == 0:
            logger.warning("image %s has no cells; it gets no prediction", bag.image_id)
            continue
        batch.append(bag)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


@torch.no_grad()
def predict_bags(loaded: LoadedModel, bags: Iterable[BagInput], batch_size: int = 8,
                 device: str | torch.device = "cpu", show_progress: bool = False,
                 total: int | None = None) -> Predictions:
    """Run the model over bags (all cells of each image)."""
    from tqdm import tqdm

    model = loaded.model.to(device).eval()
    image_ids: list[str] = []
    image_probs: list[np.ndarray] = []
    cell_frames: list[pd.DataFrame] = []
    attention_rows: list[np.ndarray] = []
    bar = tqdm(total=total, desc="predict", unit="image", disable=not show_progress)
    for group in _batched(bags, batch_size):
        n = max(len(b.crops) for b in group)
        s = group[0].crops.shape[-1]
        crops = torch.zeros((len(group), n, 4, s, s))
        masks = torch.zeros((len(group), n, s, s))
        present = torch.zeros((len(group), n), dtype=torch.bool)
        usable = torch.zeros((len(group), n), dtype=torch.bool)
        for i, bag in enumerate(group):
            k = len(bag.crops)
            crops[i, :k] = torch.from_numpy(bag.crops).float() / 255.0
            masks[i, :k] = torch.from_numpy(bag.masks).float()
            present[i, :k] = True
            usable[i, :k] = torch.from_numpy(bag.usable if bag.usable.any() else np.ones(k, bool))
        batch = BagBatch(crops.to(device), masks.to(device), present.to(device))
        embeddings = model.embed_instances(batch)
        pooled = model.pool(embeddings, usable.to(device))
        every_cell = model.pool(embeddings, present.to(device))
        img_p = torch.sigmoid(pooled.image_logits.float()).cpu().numpy()
        cell_p = torch.sigmoid(every_cell.cell_logits.float()).cpu().numpy()
        attention = pooled.attention.float().cpu().numpy()
        for i, bag in enumerate(group):
            k = len(bag.crops)
            image_ids.append(bag.image_id)
            image_probs.append(img_p[i])
            frame = bag.cells.copy()
            frame["used_for_image"] = usable[i, :k].numpy()
            probs = cell_p[i, :k]
            for c, name in enumerate(CLASS_NAMES[: probs.shape[1]]):
                frame[name] = probs[:, c]
            top = probs.argmax(axis=1)
            frame["top_label_id"] = top
            frame["top_label"] = [CLASS_NAMES[t] for t in top]
            frame["top_probability"] = probs[np.arange(k), top]
            att = attention[i, :k].reshape(k, -1)
            frame["attention"] = att[np.arange(k), top] if att.shape[1] > 1 else att[:, 0]
            cell_frames.append(frame)
            attention_rows.append(att)
        bar.update(len(group))
    bar.close()
    if not image_ids:
        raise ValueError("no image with cells to predict")
    return Predictions(image_ids, np.vstack(image_probs), pd.concat(cell_frames, ignore_index=True),
                       np.vstack(attention_rows), loaded.thresholds)


def model_exclude_flags(loaded: LoadedModel) -> tuple[str, ...]:
    """The QC flags the model was trained without (its training config), else the default."""
    return tuple(loaded.training.get("exclude_flags", DEFAULT_EXCLUDE_FLAGS))


def predict_cache(loaded: LoadedModel, cache_path: Path, batch_size: int = 8, device: str | torch.device = "cpu",
                  show_progress: bool = True) -> Predictions:
    with CellCache(cache_path) as cache:
        total = cache.num_images
    return predict_bags(loaded, bags_from_cache(cache_path, model_exclude_flags(loaded)), batch_size, device,
                        show_progress, total)
