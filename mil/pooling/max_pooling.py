"""Max pooling over cells, per class: an image has a class when its most confident cell does.

Attention is the one-hot choice of the maximal cell per class (`B,N,K`).
"""

from __future__ import annotations

import torch
from torch import nn

from mil.pooling._registry import PoolingOutput, register_head, zero_padding


@register_head("max")
class MaxPooling(nn.Module):
    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(in_features, num_classes)

    def forward(self, embeddings: torch.Tensor, mask: torch.Tensor) -> PoolingOutput:
        cell_logits = self.classifier(self.dropout(embeddings))
        masked = cell_logits.masked_fill(~mask.unsqueeze(-1), float("-inf"))
        image_logits, chosen = masked.max(dim=1)
        attention = torch.zeros_like(cell_logits).scatter_(1, chosen.unsqueeze(1), 1.0)
        return PoolingOutput(image_logits, zero_padding(cell_logits, mask), attention)
