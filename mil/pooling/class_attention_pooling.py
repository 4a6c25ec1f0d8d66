"""Per-class gated attention: one gated attention branch per class (the multi-label form of Ilse et al.).

Each class looks at the bag with its own attention (`B,N,K`): a nucleoli-positive cell can dominate the
nucleoli decision while a different cell dominates the mitochondria decision. Image logit of class k =
sum over cells of attention[k] * cell logit[k], with independent sigmoid outputs per class.
"""

from __future__ import annotations

import torch
from torch import nn

from mil.pooling._registry import GatedScorer, PoolingOutput, masked_softmax, register_head, zero_padding


@register_head("class_gated_attention")
class ClassGatedAttentionPooling(nn.Module):
    def __init__(self, in_features: int, num_classes: int, hidden: int = 128, dropout: float = 0.0) -> None:
        super().__init__()
        self.scorer = GatedScorer(in_features, hidden, num_classes, gated=True, dropout=dropout)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(in_features, num_classes)

    def forward(self, embeddings: torch.Tensor, mask: torch.Tensor) -> PoolingOutput:
        attention = masked_softmax(self.scorer(embeddings), mask)
        cell_logits = zero_padding(self.classifier(self.dropout(embeddings)), mask)
        image_logits = (cell_logits * attention).sum(dim=1)
        return PoolingOutput(image_logits, cell_logits, attention)
