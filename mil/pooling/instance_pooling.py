"""Instance-classifier head: an MLP scores each cell, and the cell logits are pooled into the image's.

`pool="lse"`: log-sum-exp, a smooth maximum, `(1/r) log(mean_i exp(r x_i))` per class (r = `sharpness`;
r -> 0 is the mean, r -> inf the max). `pool="attention"`: per-class gated attention weights over the cells.
"""

from __future__ import annotations

import torch
from torch import nn

from mil.pooling._registry import GatedScorer, PoolingOutput, masked_softmax, register_head, zero_padding


@register_head("instance")
class InstanceClassifierPooling(nn.Module):
    def __init__(self, in_features: int, num_classes: int, hidden: int = 256, pool: str = "lse",
                 sharpness: float = 5.0, dropout: float = 0.0) -> None:
        super().__init__()
        if pool not in ("lse", "attention"):
            raise ValueError(f"instance head pool must be 'lse' or 'attention', got {pool!r}")
        self.pool_kind = pool
        self.sharpness = float(sharpness)
        self.classifier = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Dropout(dropout),
                                        nn.Linear(hidden, num_classes))
        self.scorer = GatedScorer(in_features, 128, num_classes, gated=True) if pool == "attention" else None

    def forward(self, embeddings: torch.Tensor, mask: torch.Tensor) -> PoolingOutput:
        cell_logits = zero_padding(self.classifier(embeddings), mask)
        if self.scorer is not None:
            attention = masked_softmax(self.scorer(embeddings), mask)
            return PoolingOutput((cell_logits * attention).sum(dim=1), cell_logits, attention)
        r = self.sharpness
        scaled = (r * cell_logits).masked_fill(~mask.unsqueeze(-1), float("-inf"))
        counts = mask.sum(dim=1, keepdim=True).clamp(min=1).float()
        image_logits = (torch.logsumexp(scaled, dim=1) - torch.log(counts)) / r
        attention = torch.softmax(scaled, dim=1).masked_fill(~mask.unsqueeze(-1), 0.0)  # each cell's share
        return PoolingOutput(image_logits, cell_logits, attention)
