"""The dense family: a segmentation network over the whole field, per-pixel class logits pooled into cells, then a
pooling head over the cells (`mil.dense_model.DenseMILModel`).

Trains on whole fitted fields, or random windows of them (`mil.dense_fields.DenseFieldDataset`); predicts whole
fields and also returns per-pixel class maps. It can warm-start from a trained crop-MIL model folder with the same
timm encoder: the encoder weights (`crop_model_backbone_state`) and the input standardisation
(`with_crop_model_statistics`). That folder is loaded through the registry (`mil.families._factory.load_model`),
so this module never imports the crop family's module.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from hpa_cells.channels import NUM_CHANNELS
from mil.config import DenseConfig
from mil.dense_fields import DenseFieldDataset, collate_fields, fit_field
from mil.dense_model import DenseMILModel
from mil.encoders import EncoderWeightsError
from mil.families._factory import load_model
from mil.families._registry import ModelFamily, TrainingData, register_family
from mil.model_files import LoadedModel, ModelFolderError
from mil.prediction_batches import BagInput, GroupOutput, to_device, usable_mask


def _crop_model(folder: str | os.PathLike[str], encoder: str) -> LoadedModel:
    """The crop-MIL model in `folder`, checked to have the timm model of the dense encoder `encoder`."""
    try:
        loaded = load_model(folder)
    except (ModelFolderError, ValueError) as err:
        raise EncoderWeightsError(f"encoder weights {folder}: not a usable model folder: {err}") from err
    if loaded.config.family != "crop":
        raise EncoderWeightsError(f"encoder weights {folder}: a {loaded.config.family} model folder; only a crop "
                                  "MIL model's encoder can start a dense model")
    if f"tu-{loaded.config.encoder}" != encoder:
        raise EncoderWeightsError(f"encoder weights {folder}: its encoder is {loaded.config.encoder!r}, which does not "
                                  f"fit the dense encoder {encoder!r} (use --dense-encoder tu-{loaded.config.encoder})")
    return loaded


def crop_model_backbone_state(folder: str | os.PathLike[str], encoder: str) -> dict[str, torch.Tensor]:
    """The timm backbone weights of the crop-MIL model in `folder`, for a dense `tu-` encoder of the same timm
    model. The crop model's first convolution may have a 5th input (the cell mask); only the 4 image channels'
    weights are kept. EncoderWeightsError names the folder when it is not a crop model with that encoder."""
    loaded = _crop_model(folder, encoder)
    state = {k: v.detach().clone() for k, v in loaded.model.encoder.backbone.state_dict().items()}
    first_conv = loaded.model.encoder.backbone.pretrained_cfg.get("first_conv")
    key = f"{first_conv}.weight"
    if key in state and state[key].shape[1] != NUM_CHANNELS:
        state[key] = state[key][:, :NUM_CHANNELS].contiguous()
    return state


def with_crop_model_statistics(config: DenseConfig, folder: str | os.PathLike[str]) -> DenseConfig:
    """`config` with the input standardisation of the crop-MIL model in `folder` (its first 4 channels)."""
    crop = _crop_model(folder, config.encoder).config
    return replace(config, channel_mean=tuple(crop.channel_mean[:NUM_CHANNELS]),
                   channel_std=tuple(crop.channel_std[:NUM_CHANNELS]))


def build(config: DenseConfig, encoder_weights: str | None = None) -> DenseMILModel:
    """The dense module; `encoder_weights` is a local timm checkpoint or a crop-MIL model folder."""
    return DenseMILModel(config, encoder_weights=encoder_weights, backbone_from_folder=crop_model_backbone_state)


def training_data(model_config: DenseConfig, config) -> TrainingData:
    """Fields over a schema-2 cache for the training loop; `config` is a `mil.training.TrainConfig` (seed,
    exclude_flags, dense_window). Per-cell label training and mosaic bags are the crop family's only."""
    if config.cell_labels is not None:
        raise ValueError("cell-supervised training (cell_labels) is implemented for the crop family only")
    if config.mosaic_bags:
        raise ValueError("mosaic bags (mosaic_bags) mix cell crops of several fields and are implemented for the "
                         "crop family only; a dense model reads whole fields")

    def make_dataset(cache_path: Path, image_indices: Sequence[int], train: bool) -> Dataset:
        return DenseFieldDataset(cache_path, image_indices, model_config.input_size, train=train, seed=config.seed,
                                 exclude_flags=config.exclude_flags, window=config.dense_window)

    return TrainingData(make_dataset, collate_fields)


def predict_group(model: DenseMILModel, group: list[BagInput], device: str | torch.device) -> GroupOutput:
    """One forward pass over the bags' fields: image and cell probabilities as the crop family's, plus each field's
    `K,h,w` uint8 pixel probabilities (0 outside the bag's cells) at its fitted content size."""
    input_size = model.config.input_size
    present, usable = usable_mask(group)
    cell_ids = torch.zeros(present.shape, dtype=torch.long)
    fitted = []
    for i, bag in enumerate(group):
        if bag.image_chw is None or bag.cells_hw is None:
            raise ValueError(f"image {bag.image_id}: the dense model needs the field and its label map")
        ids = bag.cells["cell_id"].to_numpy(dtype=np.int64)
        cell_ids[i, : len(ids)] = torch.from_numpy(ids)
        fitted.append(fit_field(bag.image_chw, bag.cells_hw, input_size, keep_cells=ids))
    images = to_device(torch.from_numpy(np.stack([f.image for f in fitted])), device)
    labels = to_device(torch.from_numpy(np.stack([f.cell_labels for f in fitted])), device)
    pixels = model.pixel_logits(images).float()
    cells = model.cell_logits(pixels, labels, to_device(cell_ids, device), to_device(present, device))
    pooled = model.pool(cells, to_device(usable, device))
    every_cell = model.pool(cells, to_device(present, device))
    pixel_probs = torch.sigmoid(pixels).cpu().numpy()
    maps = []
    for i, (bag, fit) in enumerate(zip(group, fitted, strict=True)):
        h, w = fit.content_hw
        inside = np.isin(fit.cell_labels[:h, :w], cell_ids[i, : len(bag)].numpy())
        maps.append(np.round(pixel_probs[i, :, :h, :w] * 255 * inside).astype(np.uint8))
    return GroupOutput(torch.sigmoid(pooled.image_logits.float()).cpu().numpy(),
                       torch.sigmoid(every_cell.cell_logits.float()).cpu().numpy(),
                       pooled.attention.float().cpu().numpy(), usable, maps)


FAMILY = register_family(ModelFamily(
    name="dense", config_class=DenseConfig, inputs="fields", build=build,
    warm_start_config=with_crop_model_statistics, training_data=training_data, predict_group=predict_group,
    pixel_maps=True, encoder_of=lambda module: module.network.encoder,
))
