"""The training losses: BCE or focal loss on image (or cell) logits, the negative-cell term, class weighting and
the prior initialisation of the class bias."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mil.training.config import TrainConfig


def loss_function(logits: torch.Tensor, targets: torch.Tensor, config: TrainConfig,
                  pos_weight: torch.Tensor | None) -> torch.Tensor:
    """BCE with logits, or the focal loss (Lin et al. 2017) with `config.focal_gamma`, averaged over entries."""
    if config.loss == "bce":
        return F.binary_cross_entropy_with_logits(logits, targets, pos_weight=pos_weight)
    bce = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=pos_weight, reduction="none")
    p = torch.sigmoid(logits)
    p_t = p * targets + (1 - p) * (1 - targets)
    return ((1 - p_t) ** config.focal_gamma * bce).mean()


def negative_cell_loss(cell_logits: torch.Tensor, valid: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """BCE pushing down the cell logits of classes the cell's image does not have.

    Image labels say more than "some cell has class k": when an image lacks class k, every one of its cells lacks
    it. This uses only image-level labels, and trains the ranking of cells directly, where attention pooling
    alone leaves low-attention cells of positive images unconstrained. Averaged over (real cell, absent class).
    """
    absent = (labels < 0.5).unsqueeze(1) & valid.unsqueeze(-1)  # B,N,K
    if not absent.any():
        return cell_logits.sum() * 0.0
    per_entry = F.binary_cross_entropy_with_logits(cell_logits, torch.zeros_like(cell_logits), reduction="none")
    return per_entry[absent].mean()


def batch_loss(output, batch, cell_targets: torch.Tensor | None, config: TrainConfig,
               pos_weight: torch.Tensor | None) -> torch.Tensor:
    """The training loss of one batch: with per-cell targets (cell supervision) the loss over every real cell;
    else the image loss plus `negative_cell_weight` x `negative_cell_loss`."""
    if cell_targets is not None:
        valid = batch.valid
        return loss_function(output.cell_logits.float()[valid], cell_targets[valid], config, pos_weight)
    loss = loss_function(output.image_logits.float(), batch.labels, config, pos_weight)
    if config.negative_cell_weight > 0:
        loss = loss + config.negative_cell_weight * negative_cell_loss(
            output.cell_logits.float(), batch.valid, batch.labels)
    return loss


def class_pos_weight(labels: np.ndarray, device: torch.device) -> torch.Tensor:
    """Per-class positive weights (negatives / positives of the training labels `M,K`, clipped to [1, 50])."""
    positives = labels.sum(axis=0)
    weights = np.clip((len(labels) - positives) / np.maximum(positives, 1), 1.0, 50.0)
    return torch.tensor(weights, dtype=torch.float32, device=device)


def initialise_class_bias(model: nn.Module, prevalence: np.ndarray) -> None:
    """Start every class logit at the log-odds of the class's training prevalence (the prior initialisation of
    Lin et al. 2017): with 28 rare classes a zero bias starts at p = 0.5 and spends the first epoch only
    learning that labels are rare. Prevalence is clipped to [0.01, 0.99]."""
    prior = torch.as_tensor(np.clip(prevalence, 0.01, 0.99), dtype=torch.float32)
    with torch.no_grad():
        bias = model.class_bias()
        bias.copy_(torch.logit(prior).to(bias.device, bias.dtype))
