"""Attention pooling (Ilse, Tomczak & Welling 2018), plain and gated.

One attention weight per cell, a softmax over the bag; image embedding = weighted sum of cell embeddings;
a linear classifier on it. Because the weights sum to 1, image logits = the attention-weighted sum of the
per-cell linear logits, so each cell's logits are exact, not a post-hoc explanation.
"""

from __future__ import annotations

import torch
from torch import nn

from mil.pooling._registry import GatedScorer, PoolingOutput, masked_softmax, register_head, zero_padding


class _AttentionPooling(nn.Module):
    gated = False

    def __init__(self, in_features: int, num_classes: int, hidden: int = 128, dropout: float = 0.0) -> None:
        super().__init__()
        self.scorer = GatedScorer(in_features, hidden, 1, gated=self.gated, dropout=dropout)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(in_features, num_classes)

    def forward(self, embeddings: torch.Tensor, mask: torch.Tensor) -> PoolingOutput:
        attention = masked_softmax(self.scorer(embeddings).squeeze(-1), mask)
        cell_logits = zero_padding(self.classifier(self.dropout(embeddings)), mask)
        image_logits = (cell_logits * attention.unsqueeze(-1)).sum(dim=1)
        return PoolingOutput(image_logits, cell_logits, attention)


@register_head("attention")
class AttentionPooling(_AttentionPooling):
    gated = False


@register_head("gated_attention")
class GatedAttentionPooling(_AttentionPooling):
    gated = True
