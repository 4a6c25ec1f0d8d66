"""The crop-based attention-MIL model: encoder per cell -> pooling head over the cells of an image.

Split forward, as in timm: `embed_instances` (cell crops -> `B,N,D` embeddings; only real cells ever reach the
encoder, so padding cannot change batch-norm statistics or any output), `pool` (head -> image and cell logits
and attention), and `forward` returning a `MILOutput`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mil.config import MILConfig
from mil.encoders import create_encoder
from mil.pooling import PoolingOutput, create_head


@dataclass
class MILOutput:
    """image_logits `B,K`; cell_logits `B,N,K` (0 at padding); attention `B,N` or `B,N,K` (0 at padding)."""

    image_logits: torch.Tensor
    cell_logits: torch.Tensor
    attention: torch.Tensor


@dataclass
class BagBatch:
    """A padded batch of bags. crops `B,N,4,S,S` float in [0, 1]; masks `B,N,S,S` float (the cell's own mask);
    valid `B,N` bool (False = padding); labels `B,K` float or None."""

    crops: torch.Tensor
    masks: torch.Tensor
    valid: torch.Tensor
    labels: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> BagBatch:
        labels = None if self.labels is None else self.labels.to(device)
        return BagBatch(self.crops.to(device), self.masks.to(device), self.valid.to(device), labels)


class ChannelStandardisation(nn.Module):
    """`(x - mean) / std` per channel of `M,4,H,W` inputs; the identity when the statistics are None. The
    statistics live in the model config (config.json), not in the weights file."""

    def __init__(self, mean: tuple[float, ...] | None, std: tuple[float, ...] | None) -> None:
        super().__init__()
        self.enabled = mean is not None
        self.register_buffer("mean", torch.tensor(mean or (0.0,) * 4, dtype=torch.float32).view(1, -1, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(std or (1.0,) * 4, dtype=torch.float32).view(1, -1, 1, 1),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std if self.enabled else x


class MILModel(nn.Module):
    def __init__(self, config: MILConfig, encoder_weights: str | None = None) -> None:
        super().__init__()
        self.config = config
        self.encoder = create_encoder(config.encoder, in_chans=config.in_chans, weights=encoder_weights,
                                      drop_rate=config.dropout)
        self.head = create_head(config.head, in_features=self.encoder.num_features, num_classes=config.num_classes,
                                dropout=config.dropout, **config.head_kwargs)
        self.standardise = ChannelStandardisation(config.channel_mean, config.channel_std)

    def encoder_input(self, crops: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """`M,4,S,S` crops (+ `M,S,S` masks) -> the `M,C,s,s` encoder input at `config.input_size`, the four
        image channels standardised with the config's channel statistics."""
        crops = self.standardise(crops)
        x = torch.cat([crops, masks.unsqueeze(1)], dim=1) if self.config.use_mask_channel else crops
        if x.shape[-1] != self.config.input_size:
            x = F.interpolate(x, size=(self.config.input_size, self.config.input_size), mode="area")
        return x

    def embed_cells(self, crops: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Embeddings `M,D` of `M` independent cells."""
        return self.encoder(self.encoder_input(crops, masks))

    def embed_instances(self, batch: BagBatch) -> torch.Tensor:
        """`B,N,D` embeddings; padded positions are zeros and never pass through the encoder."""
        b, n = batch.valid.shape
        flat = self.embed_cells(batch.crops[batch.valid], batch.masks[batch.valid])
        out = flat.new_zeros((b, n, flat.shape[-1]))
        out[batch.valid] = flat
        return out

    def pool(self, embeddings: torch.Tensor, valid: torch.Tensor) -> PoolingOutput:
        return self.head(embeddings, valid)

    def class_bias(self) -> torch.Tensor:
        """The `K` bias of the layer that outputs the per-cell class logits (every head has a `classifier`)."""
        classifier = self.head.classifier
        layer = classifier[-1] if isinstance(classifier, nn.Sequential) else classifier
        return layer.bias

    def forward(self, batch: BagBatch) -> MILOutput:
        pooled = self.pool(self.embed_instances(batch), batch.valid)
        return MILOutput(pooled.image_logits, pooled.cell_logits, pooled.attention)
