"""Validation predictions of the training loop, over one process or gathered from every rank.

Each rank predicts the validation bags of its `EpochSampler` share (positions r, r + W, ...); the shares are
gathered on every rank and put back in dataset order, and the loss is the sum of every batch's summed BCE over
the number of entries. So the validation loss, the macro F1, early stopping and the fitted thresholds are
computed on the whole validation set exactly as one process computes them (the same arrays in the same order;
only the loss's floating-point sum runs in another order). With one process the result is bit-identical to the
single-process loop's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from mil.training.distributed import SINGLE, Ranks, gather_objects
from mil.training.precision import autocast, to_device


@dataclass
class ValidationShare:
    """One rank's validation predictions: dataset `positions` `n`, image probabilities and targets `n,K`, and
    the summed BCE of each batch (in reading order)."""

    positions: list[int]
    probs: np.ndarray
    targets: np.ndarray
    batch_losses: list[float]


@torch.no_grad()
def predict_share(model: nn.Module, loader: DataLoader, device: torch.device, precision: str = "fp32",
                  positions: list[int] | None = None) -> ValidationShare:
    """Image probabilities and targets of the loader's bags (all cells, no augmentation) and each batch's summed
    BCE; `positions` are the bags' dataset positions (default: the loader's sampler's, else 0..n-1)."""
    model.eval()
    non_blocking = device.type == "cuda"
    probs, targets, losses = [], [], []
    for collated in loader:
        batch = to_device(collated.batch, device, non_blocking)
        with autocast(device, precision):
            logits = model(batch).image_logits
        logits = logits.float()
        losses.append(F.binary_cross_entropy_with_logits(logits, batch.labels, reduction="sum"))
        probs.append(torch.sigmoid(logits))
        targets.append(batch.labels)
    p = torch.cat(probs).cpu().numpy() if probs else np.zeros((0, 0), np.float32)  # a rank may have no bags
    t = torch.cat(targets).cpu().numpy() if targets else np.zeros((0, 0), np.float32)
    if positions is None:
        sampler = getattr(loader, "sampler", None)
        positions = sampler.positions() if hasattr(sampler, "positions") else list(range(len(p)))
    return ValidationShare(list(positions), p, t, [float(v) for v in losses])


def combine_shares(shares: list[ValidationShare]) -> tuple[np.ndarray, np.ndarray, float]:
    """(probabilities `N,K`, targets `N,K`, mean BCE) of the shares in dataset order."""
    shares = [s for s in shares if len(s.positions)] or shares[:1]
    positions = np.concatenate([np.asarray(s.positions, dtype=np.int64) for s in shares])
    order = np.argsort(positions, kind="stable")
    probs = np.concatenate([s.probs for s in shares])[order]
    targets = np.concatenate([s.targets for s in shares])[order]
    loss = sum(v for s in shares for v in s.batch_losses) / max(1, targets.size)
    return probs, targets, loss


def predict_bags(model: nn.Module, loader: DataLoader, device: torch.device, precision: str = "fp32",
                 ranks: Ranks = SINGLE) -> tuple[np.ndarray, np.ndarray, float]:
    """Image probabilities `N,K`, targets `N,K` and mean BCE over the validation bags (all cells, no
    augmentation): this process's loader, gathered from every rank when `ranks` is a process group."""
    share = predict_share(model, loader, device, precision)
    return combine_shares(gather_objects(share, ranks))
