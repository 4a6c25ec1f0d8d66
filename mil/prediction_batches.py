"""What a model family predicts from: `BagInput` (all cells of one image) and the `GroupOutput` of one forward pass
over a group of bags. Shared by `mil.inference` (which batches the bags) and each family's `predict_group`, with
the group's inputs as tensors (`padded_crops`, `usable_mask`) and their copy to the device (`to_device`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch


@dataclass
class BagInput:
    """All cells of one image: crops `N,4,S,S` uint8, masks `N,S,S` uint8 (for the crop family), usable `N` bool,
    a per-cell table (cell_id, centroid_y, centroid_x, qc_flags, ... ) aligned with the crops, and for the dense
    family the field `4,H,W` uint8 with its `H,W` cell label map at working size."""

    image_id: str
    crops: np.ndarray | None
    masks: np.ndarray | None
    usable: np.ndarray
    cells: pd.DataFrame
    image_chw: np.ndarray | None = None
    cells_hw: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.cells)


@dataclass
class GroupOutput:
    """One forward pass over a group of bags: image probabilities `B,K`, cell probabilities `B,N,K` (every cell),
    attention `B,N` or `B,N,K` (0 for cells left out of the pooling), usable `B,N`, pixel maps (dense) per bag."""

    image_probs: np.ndarray
    cell_probs: np.ndarray
    attention: np.ndarray
    usable: torch.Tensor
    pixel_maps: list[np.ndarray] | None = None


def usable_mask(group: list[BagInput]) -> tuple[torch.Tensor, torch.Tensor]:
    """(`B,N` present, `B,N` usable: the bag's usable cells, or all its cells when none is)."""
    n = max(len(b) for b in group)
    present = torch.zeros((len(group), n), dtype=torch.bool)
    usable = torch.zeros((len(group), n), dtype=torch.bool)
    for i, bag in enumerate(group):
        k = len(bag)
        present[i, :k] = True
        usable[i, :k] = torch.from_numpy(bag.usable if bag.usable.any() else np.ones(k, bool))
    return present, usable


def padded_crops(group: list[BagInput]) -> tuple[torch.Tensor, torch.Tensor]:
    """(crops `B,N,4,S,S`, masks `B,N,S,S`), both uint8 and zero past each bag's cells (N: the largest bag), so the
    copy to a GPU moves bytes, not floats; the model's inputs are `crops.float() / 255` and `masks.float()`."""
    n = max(len(b) for b in group)
    s = group[0].crops.shape[-1]
    crops = torch.zeros((len(group), n, 4, s, s), dtype=torch.uint8)
    masks = torch.zeros((len(group), n, s, s), dtype=torch.uint8)
    for i, bag in enumerate(group):
        if bag.crops.dtype != np.uint8 or bag.masks.dtype != np.uint8:
            raise ValueError(f"image {bag.image_id}: crops and masks must be uint8, got {bag.crops.dtype} and "
                             f"{bag.masks.dtype}")
        k = len(bag)
        crops[i, :k] = torch.from_numpy(bag.crops)
        masks[i, :k] = torch.from_numpy(bag.masks)
    return crops, masks


def to_device(tensor: torch.Tensor, device: str | torch.device) -> torch.Tensor:
    """`tensor` on `device`. To a GPU through page-locked memory and without waiting (`non_blocking`): the copy
    is queued behind the work already on the device, and everything queued after it sees the copied data."""
    device = torch.device(device)
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)
