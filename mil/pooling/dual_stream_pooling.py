"""Dual-stream pooling (DSMIL, Li, Li and Eliceiri, CVPR 2021): a max-pooling stream and a critical-instance
attention stream, averaged.

Instance stream: a linear classifier scores every cell (the cell logits); per class the image's most confident
cell is its critical instance, and its logit is the first stream's image logit. Bag stream: every cell is
weighted by the similarity of its query embedding to the critical instance's (a softmax over the bag's cells,
per class), its value embeddings are pooled with those weights into one bag embedding per class, and a
per-class linear layer scores it. Image logit = the mean of the two streams. Cells that look like the surest
cell of a class carry the bag's decision, so the attention follows cell similarity rather than a free gate.
The bag stream shares the classifier's bias, so the prior initialisation of the class bias sets both.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mil.pooling._registry import PoolingOutput, masked_softmax, register_head, zero_padding


@register_head("dual_stream")
class DualStreamPooling(nn.Module):
    def __init__(self, in_features: int, num_classes: int, query_features: int = 128, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(in_features, num_classes)
        self.query = nn.Sequential(nn.Linear(in_features, query_features), nn.Tanh())
        self.value = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, in_features))
        self.bag_weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.normal_(self.bag_weight, std=1.0 / math.sqrt(in_features))
        self.scale = 1.0 / math.sqrt(query_features)

    def forward(self, embeddings: torch.Tensor, mask: torch.Tensor) -> PoolingOutput:
        cell_logits = self.classifier(self.dropout(embeddings))  # B,N,K
        masked = cell_logits.masked_fill(~mask.unsqueeze(-1), float("-inf"))
        max_logits, critical = masked.max(dim=1)  # B,K
        queries = self.query(embeddings)  # B,N,Q
        critical_queries = torch.gather(queries, 1, critical.unsqueeze(-1).expand(-1, -1, queries.shape[-1]))
        similarity = torch.einsum("bnq,bkq->bnk", queries, critical_queries) * self.scale
        attention = masked_softmax(similarity, mask)  # B,N,K
        bag = torch.einsum("bnk,bnd->bkd", attention, self.value(embeddings))  # B,K,D
        bag_logits = (bag * self.bag_weight).sum(dim=-1)
        if isinstance(self.classifier, nn.Linear):  # not when it pools given cell logits (the dense family)
            bag_logits = bag_logits + self.classifier.bias
        return PoolingOutput((max_logits + bag_logits) / 2, zero_padding(cell_logits, mask), attention)
