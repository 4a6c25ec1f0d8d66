"""The training losses: BCE or focal loss on image (or cell) logits, the negative-cell term, the top-k instance
term, the pseudo-label cell term of self-training (`mil.self_training`), class weighting and the prior
initialisation of the class bias."""

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


def topk_instance_loss(cell_logits: torch.Tensor, valid: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """BCE pulling up, for every class an image has, the logits of its `k` highest-scoring real cells.

    The instance-level half of the MIL assumption ("some cell has class k"): where attention pooling lets a
    positive image be explained by a blend of many cells, this asks that its best cells themselves say so. Cells
    of bags with fewer than `k` real cells count once each. Averaged over (bag, present class, chosen cell).
    """
    b, n, num_classes = cell_logits.shape
    k = min(k, n)
    ranked = cell_logits.masked_fill(~valid.unsqueeze(-1), float("-inf"))
    top = torch.topk(ranked, k, dim=1).values  # B,k,K
    chosen = torch.isfinite(top) & (labels > 0.5).unsqueeze(1)
    if not chosen.any():
        return cell_logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(top[chosen], torch.ones_like(top[chosen]))


def pseudo_label_loss(cell_logits: torch.Tensor, valid: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """BCE of the cell logits against per-cell targets where they are known: `targets` `B,N,K` holds 1, 0 or NaN
    (unknown: left out), as self-training's pseudo-labels do (`mil.self_training`). Averaged over known entries
    of real cells."""
    known = valid.unsqueeze(-1) & ~torch.isnan(targets)
    if not known.any():
        return cell_logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(cell_logits[known], targets[known])


def batch_loss(output, batch, cell_targets: torch.Tensor | None, config: TrainConfig,
               pos_weight: torch.Tensor | None) -> torch.Tensor:
    """The training loss of one batch. Cell supervision (`config.cell_labels`): the loss over every real cell.
    Else the image loss, plus `negative_cell_weight` x `negative_cell_loss`, plus `topk_weight` x
    `topk_instance_loss` when `topk_cells` is set, plus `pseudo_label_weight` x `pseudo_label_loss` when the bags
    carry pseudo-labels (`config.pseudo_labels`)."""
    if cell_targets is not None and config.pseudo_labels is None:
        valid = batch.valid
        return loss_function(output.cell_logits.float()[valid], cell_targets[valid], config, pos_weight)
    cell_logits = output.cell_logits.float()
    loss = loss_function(output.image_logits.float(), batch.labels, config, pos_weight)
    if config.negative_cell_weight > 0:
        loss = loss + config.negative_cell_weight * negative_cell_loss(cell_logits, batch.valid, batch.labels)
    if config.topk_cells > 0:
        loss = loss + config.topk_weight * topk_instance_loss(cell_logits, batch.valid, batch.labels,
                                                               config.topk_cells)
    if cell_targets is not None:
        loss = loss + config.pseudo_label_weight * pseudo_label_loss(cell_logits, batch.valid, cell_targets)
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
