"""Pooling per-pixel class logits inside each cell mask into per-cell logits (the dense family's first pooling).

`pool_pixels_into_cells` reads, for each cell of a batch, only the pixels whose label is that cell's id: every
other pixel (background, cells not in the bag, padding of the field) and every padded cell slot is routed to a
discard slot that is never read, so neither values nor gradients leak between cells. Two poolings:

- `mean`: the cell's mean pixel logit (linear, so the mean of a linear map of pixel features is that map of the
  mean feature; small, smooth gradients spread over the whole cell).
- `lse`: log-sum-exp, `(1/r) log(mean_i exp(r x_i))` per class, a smooth maximum (r -> 0 the mean, r -> inf the
  max): a cell counts as positive when part of it is, which suits compact patterns (nucleoli, centrosome).
"""

from __future__ import annotations

import torch

CELL_POOLS = ("mean", "lse")


def _cell_slots(cell_labels: torch.Tensor, cell_ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """`B,P` slot of every pixel: j when its label is the id of valid cell j of its image, N (discard) otherwise."""
    b, n = cell_ids.shape
    flat = cell_labels.reshape(b, -1).long()
    ids = cell_ids.long().masked_fill(~valid, 0)
    if flat.numel() and int(flat.min()) < 0:
        raise ValueError("cell label maps must hold labels >= 0 (0 = background)")
    if valid.any() and int(ids[valid].min()) <= 0:
        raise ValueError("valid cells need ids >= 1 (0 is the background label)")
    size = int(max(int(flat.max()) if flat.numel() else 0, int(ids.max()) if ids.numel() else 0)) + 1
    slot_of_label = torch.full((b, size), n, dtype=torch.long, device=flat.device)
    rows = torch.arange(b, device=flat.device)[:, None].expand(b, n)
    positions = torch.arange(n, device=flat.device)[None, :].expand(b, n)
    taken = torch.zeros((b, size), dtype=torch.long, device=flat.device)
    taken.index_put_((rows[valid], ids[valid]), torch.ones_like(ids[valid]), accumulate=True)
    if (taken > 1).any():
        image, label = (int(v) for v in torch.nonzero(taken > 1)[0])
        raise ValueError(f"cell id {label} appears twice among the valid cells of batch item {image}")
    slot_of_label[rows[valid], ids[valid]] = positions[valid]
    return torch.gather(slot_of_label, 1, flat)


def pool_pixels_into_cells(pixel_logits: torch.Tensor, cell_labels: torch.Tensor, cell_ids: torch.Tensor,
                           valid: torch.Tensor, mode: str = "mean", sharpness: float = 5.0) -> torch.Tensor:
    """Per-cell logits `B,N,K` from pixel logits `B,K,H,W`, cell label maps `B,H,W` (0 = background), the label
    `cell_ids` `B,N` of each cell slot and `valid` `B,N` (False = padding). Padded slots are exactly 0.

    A valid cell without any pixel in its label map is an error naming it (its logits would be undefined).
    """
    if mode not in CELL_POOLS:
        raise ValueError(f"unknown cell pooling {mode!r}; choose one of {', '.join(CELL_POOLS)}")
    if pixel_logits.ndim != 4:
        raise ValueError(f"pixel_logits must be B,K,H,W, got {tuple(pixel_logits.shape)}")
    b, k, h, w = pixel_logits.shape
    if cell_labels.shape != (b, h, w):
        raise ValueError(f"cell_labels must be {b},{h},{w} to match the pixel logits, got {tuple(cell_labels.shape)}")
    if cell_ids.shape != valid.shape or cell_ids.shape[0] != b:
        raise ValueError(f"cell_ids {tuple(cell_ids.shape)} and valid {tuple(valid.shape)} must both be {b},N")
    n = cell_ids.shape[1]
    slots = _cell_slots(cell_labels, cell_ids, valid)  # B,P
    flat = pixel_logits.reshape(b, k, h * w)
    index = slots.unsqueeze(1).expand(b, k, h * w)
    counts = torch.zeros((b, n + 1), dtype=flat.dtype, device=flat.device)
    counts.scatter_add_(1, slots, torch.ones_like(slots, dtype=flat.dtype))
    counts = counts[:, :n]
    empty = valid & (counts == 0)
    if empty.any():
        image, slot = (int(v) for v in torch.nonzero(empty)[0])
        raise ValueError(f"cell id {int(cell_ids[image, slot])} of batch item {image} has no pixels in its label map")
    denominator = counts.clamp(min=1).unsqueeze(1)  # B,1,N
    if mode == "mean":
        sums = flat.new_zeros((b, k, n + 1)).scatter_add(2, index, flat)
        pooled = sums[..., :n] / denominator
    else:
        scaled = sharpness * flat
        # any per-cell constant keeps log-sum-exp exact; the detached per-cell maximum keeps exp() in range
        peak = flat.new_full((b, k, n + 1), float("-inf")).scatter_reduce(2, index, scaled.detach(), "amax")
        peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
        shifted = torch.exp(scaled - torch.gather(peak, 2, index))
        sums = flat.new_zeros((b, k, n + 1)).scatter_add(2, index, shifted)
        pooled = (peak[..., :n] + torch.log(sums[..., :n].clamp(min=torch.finfo(flat.dtype).tiny))
                  - torch.log(denominator)) / sharpness
    return pooled.transpose(1, 2).masked_fill(~valid.unsqueeze(-1), 0.0)
