"""The pooling-head registry: `@register_head("name")` on a head class, `create_head(name, ...)` builds it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

_HEADS: dict[str, type[nn.Module]] = {}


@dataclass
class PoolingOutput:
    """What every pooling head returns.

    image_logits: `B,K` (K classes). cell_logits: `B,N,K`, zero at padded cells. attention: `B,N` (one weight
    per cell) or `B,N,K` (one per cell and class); weights sum to 1 over each bag's real cells and are exactly 0
    at padded cells.
    """

    image_logits: torch.Tensor
    cell_logits: torch.Tensor
    attention: torch.Tensor


def register_head(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    def wrap(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _HEADS:
            raise ValueError(f"pooling head {name!r} is already registered")
        _HEADS[name] = cls
        cls.head_name = name
        return cls

    return wrap


def list_heads() -> list[str]:
    return sorted(_HEADS)


def create_head(name: str, in_features: int, num_classes: int, **kwargs: object) -> nn.Module:
    """Build a registered head; keyword arguments set to None are dropped so they never override defaults."""
    if name not in _HEADS:
        raise ValueError(f"unknown pooling head {name!r}; registered heads: {', '.join(list_heads())}")
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    return _HEADS[name](in_features=in_features, num_classes=num_classes, **kwargs)


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over cells (dim 1) of `B,N` or `B,N,K` scores; padded cells (mask False) get exactly 0."""
    expanded = mask if scores.ndim == 2 else mask.unsqueeze(-1)
    weights = torch.softmax(scores.masked_fill(~expanded, float("-inf")), dim=1)
    return weights.masked_fill(~expanded, 0.0)


def zero_padding(cell_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return cell_logits.masked_fill(~mask.unsqueeze(-1), 0.0)


class GatedScorer(nn.Module):
    """Attention scores of Ilse et al. (2018): `w^T (tanh(V h) * sigmoid(U h))`, or `w^T tanh(V h)` ungated.

    `outputs` scores per cell (1 = one attention per cell, K = one branch per class).
    """

    def __init__(self, in_features: int, hidden: int, outputs: int, gated: bool, dropout: float = 0.0) -> None:
        super().__init__()
        self.value = nn.Sequential(nn.Linear(in_features, hidden), nn.Tanh(), nn.Dropout(dropout))
        self.gate = nn.Sequential(nn.Linear(in_features, hidden), nn.Sigmoid()) if gated else None
        self.score = nn.Linear(hidden, outputs)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        hidden = self.value(embeddings)
        if self.gate is not None:
            hidden = hidden * self.gate(embeddings)
        return self.score(hidden)


def pool_given_cell_logits(head: nn.Module) -> nn.Module:
    """Turn a head into a pooling of cell logits it is given (its input is already `B,N,K` class logits, so
    in_features == num_classes): its per-cell `classifier` becomes the identity, so its cell logits are its input
    (0 at padding) and its image logits pool them by the head's own rule (attention, mean, max, log-sum-exp).
    Every registered head keeps its per-cell classifier in `classifier`; the dense family relies on that."""
    if not isinstance(getattr(head, "classifier", None), nn.Module):
        raise TypeError(f"pooling head {type(head).__name__} has no `classifier` module to replace")
    head.classifier = nn.Identity()
    return head
