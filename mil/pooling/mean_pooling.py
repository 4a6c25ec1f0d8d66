"""Mean pooling: every cell counts equally (the strong simple baseline of the 2021 HPA competition).

A linear classifier on the mean embedding equals the mean of per-cell linear logits, so per-cell logits are
exact: image logits = mean over cells of cell logits.
"""

from __future__ import annotations

import torch
from torch import nn

from mil.pooling._registry import PoolingOutput, register_head, zero_padding


@register_head("mean")
class MeanPooling(nn.Module):
    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(in_features, num_classes)

    def forward(self, embeddings: torch.Tensor, mask: torch.Tensor) -> PoolingOutput:
        cell_logits = zero_padding(self.classifier(self.dropout(embeddings)), mask)
        weights = mask.float() / mask.sum(dim=1, keepdim=True).clamp(min=1)
        image_logits = (cell_logits * weights.unsqueeze(-1)).sum(dim=1)
        return PoolingOutput(image_logits, cell_logits, weights)
