"""The dense MIL model: a segmentation network over the whole field -> per-pixel class logits -> cells -> image.

Split forward, as in the crop model: `pixel_logits` (segmentation-models-pytorch U-Net or FPN, 4 input channels,
28 output maps), `cell_logits` (each cell's pixels pooled, `mil.cell_pooling`), `pool` (a registered pooling head
over the cells, its per-cell classifier replaced by the identity, so the head pools the given cell logits), and
`forward` returning a `DenseOutput`. Trained from image-level labels only; the per-pixel maps are a by-product
that shows where inside each cell the evidence for a class sits.

Nothing is ever downloaded (`encoder_weights=None` always); `encoder_weights=PATH` loads a local timm checkpoint
into a `tu-` encoder, adapting its first convolution to the 4 channels (as `mil.encoders` does for the crop MIL), or,
when PATH is a trained crop-MIL model folder with the same timm encoder, that model's encoder: a dense model then
starts from features already trained on these images' labels (`mil.families.dense.with_crop_model_statistics` gives
it the crop model's input standardisation too, so the encoder sees inputs on the scale it was trained on). Reading
that folder is the dense family's part (`mil.families.dense`), so this module imports no model-folder code.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from hpa_cells.channels import NUM_CHANNELS
from mil.cell_pooling import pool_pixels_into_cells
from mil.config import DenseConfig
from mil.encoders import EncoderWeightsError, load_local_encoder_weights
from mil.model import ChannelStandardisation, MILOutput
from mil.pooling import PoolingOutput, create_head, pool_given_cell_logits


@dataclass
class DenseOutput(MILOutput):
    """MILOutput (image_logits `B,K`, cell_logits `B,N,K`, attention) plus pixel_logits `B,K,S,S`."""

    pixel_logits: torch.Tensor | None = None


@dataclass
class DenseBatch:
    """A batch of fields. images `B,4,S,S` float in [0, 1] (zero padding beyond each field); cell_labels `B,S,S`
    int64 label maps at the same size (0 = background and padding); cell_ids `B,N` the label of each cell slot
    (0 at padding); valid `B,N` bool; labels `B,K` float or None."""

    images: torch.Tensor
    cell_labels: torch.Tensor
    cell_ids: torch.Tensor
    valid: torch.Tensor
    labels: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> DenseBatch:
        labels = None if self.labels is None else self.labels.to(device)
        return DenseBatch(self.images.to(device), self.cell_labels.to(device), self.cell_ids.to(device),
                          self.valid.to(device), labels)


def decoder_arguments(arch: str, decoder_channels: int | None) -> dict:
    """smp keyword arguments that set the decoder width (`DenseConfig.decoder_channels`); {} keeps smp's."""
    if decoder_channels is None:
        return {}
    if arch == "fpn":
        return {"decoder_pyramid_channels": decoder_channels, "decoder_segmentation_channels": decoder_channels // 2}
    return {"decoder_channels": tuple(max(16, decoder_channels >> i) for i in range(5))}


def create_dense_network(arch: str, encoder: str, num_classes: int, decoder_channels: int | None = None) -> nn.Module:
    """An untrained smp U-Net or FPN with 4 input channels and `num_classes` output maps (no download)."""
    import segmentation_models_pytorch as smp

    builders = {"unet": smp.Unet, "fpn": smp.FPN}
    if arch not in builders:
        raise ValueError(f"unknown dense arch {arch!r}; choose one of {', '.join(builders)}")
    try:
        return builders[arch](encoder_name=encoder, encoder_weights=None, in_channels=NUM_CHANNELS,
                              classes=num_classes, **decoder_arguments(arch, decoder_channels))
    except (KeyError, RuntimeError) as err:  # smp: KeyError for its own names, timm: RuntimeError for tu- names
        raise ValueError(f"encoder {encoder!r} cannot be built for {arch}: {err}; use an smp encoder name or "
                         "'tu-' + a timm model name (e.g. tu-resnet10t)") from err


BackboneFromFolder = Callable[[str | os.PathLike[str], str], dict[str, torch.Tensor]]
"""(model folder, dense encoder name) -> the timm backbone weights that folder gives a dense `tu-` encoder."""


def load_dense_encoder_weights(network: nn.Module, encoder: str, path: str | os.PathLike[str],
                               backbone_from_folder: BackboneFromFolder | None = None) -> None:
    """Load a local timm checkpoint, or (through `backbone_from_folder`, which the dense family supplies) the
    encoder of another model folder, into the `tu-` encoder of `network` (first conv adapted to 4 channels)."""
    if not encoder.startswith("tu-"):
        raise EncoderWeightsError(
            f"local encoder weights ({path}) are supported for timm encoders ('tu-NAME'), not {encoder!r}"
        )
    if Path(path).is_dir():
        if backbone_from_folder is None:
            raise EncoderWeightsError(f"encoder weights {path}: a model folder; build the dense model with "
                                      "mil.families.build_model to start from one")
        network.encoder.model.load_state_dict(backbone_from_folder(path, encoder), strict=True)
        return
    load_local_encoder_weights(network.encoder.model, Path(path), NUM_CHANNELS)


class DenseMILModel(nn.Module):
    """See the module docstring. `encoder_weights`: a local timm checkpoint, or a model folder read by
    `backbone_from_folder` (the dense family's builder passes one; loaded before the head is made, as always)."""

    def __init__(self, config: DenseConfig, encoder_weights: str | None = None,
                 backbone_from_folder: BackboneFromFolder | None = None) -> None:
        super().__init__()
        self.config = config
        self.network = create_dense_network(config.arch, config.encoder, config.num_classes, config.decoder_channels)
        if encoder_weights is not None:
            load_dense_encoder_weights(self.network, config.encoder, encoder_weights, backbone_from_folder)
        head = create_head(config.head, in_features=config.num_classes, num_classes=config.num_classes,
                           dropout=0.0, **config.head_kwargs)
        self.head = pool_given_cell_logits(head)
        self.standardise = ChannelStandardisation(config.channel_mean, config.channel_std)

    def pixel_logits(self, images: torch.Tensor) -> torch.Tensor:
        """`B,4,S,S` fields -> `B,K,S,S` per-pixel class logits."""
        if images.ndim != 4 or images.shape[1] != NUM_CHANNELS:
            raise ValueError(f"dense model expects B,{NUM_CHANNELS},S,S fields, got {tuple(images.shape)}")
        return self.network(self.standardise(images))

    def cell_logits(self, pixel_logits: torch.Tensor, cell_labels: torch.Tensor, cell_ids: torch.Tensor,
                    valid: torch.Tensor) -> torch.Tensor:
        """`B,N,K`: each valid cell's pixel logits pooled by `config.cell_pool`; 0 at padding."""
        return pool_pixels_into_cells(pixel_logits, cell_labels, cell_ids, valid, self.config.cell_pool,
                                      self.config.lse_sharpness)

    def class_bias(self) -> torch.Tensor:
        """The `K` bias of the convolution that outputs the per-pixel class logits."""
        return self.network.segmentation_head[0].bias

    def pool(self, cell_logits: torch.Tensor, valid: torch.Tensor) -> PoolingOutput:
        return self.head(cell_logits, valid)

    def forward(self, batch: DenseBatch) -> DenseOutput:
        pixels = self.pixel_logits(batch.images)
        cells = self.cell_logits(pixels.float(), batch.cell_labels, batch.cell_ids, batch.valid)
        pooled = self.pool(cells, batch.valid)
        return DenseOutput(pooled.image_logits, pooled.cell_logits, pooled.attention, pixels)
