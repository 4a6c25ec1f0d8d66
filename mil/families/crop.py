"""The crop family: an encoder per cell crop, a pooling head over the cells of an image (`mil.model.MILModel`).

Trains on bags of up to `max_cells` random cells per image (`mil.bags.BagDataset`), or on per-cell labels when the
training config names a cell label file (`mil.cell_labels`); predicts from every cell's crop and mask.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from hpa_cells.cache import CellCache
from mil.bags import BagDataset, collate_bags
from mil.cell_labels import cell_label_matrix, read_cell_labels
from mil.config import MILConfig
from mil.encoders import EncoderWeightsError
from mil.families._registry import ModelFamily, TrainingData, register_family
from mil.model import BagBatch, MILModel
from mil.mosaics import BagsWithMosaics, MosaicDrawError
from mil.prediction_batches import BagInput, GroupOutput, padded_crops, to_device, usable_mask
from mil.pseudo_labels import pseudo_label_matrix

logger = logging.getLogger(__name__)


def build(config: MILConfig, encoder_weights: str | None = None) -> MILModel:
    """The crop MIL module; `encoder_weights` is a local timm checkpoint file (see `mil.encoders`)."""
    return MILModel(config, encoder_weights=encoder_weights)


def warm_start_config(config: MILConfig, folder: str | os.PathLike[str]) -> MILConfig:
    """The crop family starts only from a local timm checkpoint file, never from another model folder."""
    raise EncoderWeightsError(f"encoder weights {folder}: the crop family starts from a local timm checkpoint "
                              "file, not from a model folder")


def training_data(model_config: MILConfig, config) -> TrainingData:
    """Bags over a cache for the training loop; `config` is a `mil.training.TrainConfig` (max_cells, seed,
    exclude_flags, cell_labels for cell-supervised training, pseudo_labels for self-training, mosaic_bags or mosaic_fraction for extra mosaic bags in training)."""

    def make_dataset(cache_path: Path, image_indices: Sequence[int], train: bool) -> Dataset:
        cell_labels = None
        if train and config.cell_labels is not None:
            with CellCache(cache_path) as cache:
                cell_labels = cell_label_matrix(cache, read_cell_labels(Path(config.cell_labels)),
                                                config.cell_labels, image_indices=image_indices)
            logger.info("cell-supervised training on %d images: %d of their cells carry at least one class (%s)",
                        len(image_indices), int((cell_labels.sum(1) > 0).sum()), config.cell_labels)
        if train and config.pseudo_labels is not None:
            with CellCache(cache_path) as cache:
                cell_labels = pseudo_label_matrix(cache, Path(config.pseudo_labels), image_indices)
            logger.info("self-training on %d images: %d known (cell, class) targets, %d positive (%s)",
                        len(image_indices), int((~np.isnan(cell_labels)).sum()), int(np.nansum(cell_labels)),
                        config.pseudo_labels)
        mosaic_bags = config.mosaic_bags or round(config.mosaic_fraction * len(image_indices))
        if train and mosaic_bags:
            try:
                return BagsWithMosaics(cache_path, image_indices, mosaic_bags, config.max_cells, seed=config.seed,
                                       exclude_flags=config.exclude_flags, cell_labels=cell_labels)
            except MosaicDrawError as err:
                if config.mosaic_bags:  # asked for by count: the user must hear why it cannot run
                    raise
                logger.warning("no mosaic bags (mosaic_fraction %s): %s", config.mosaic_fraction, err)
        return BagDataset(cache_path, image_indices, config.max_cells if train else None, train=train,
                          seed=config.seed, exclude_flags=config.exclude_flags, cell_labels=cell_labels)

    return TrainingData(make_dataset, collate_bags)


def predict_group(model: MILModel, group: list[BagInput], device: str | torch.device) -> GroupOutput:
    """One forward pass over the bags' crops: image logits pool the usable cells, cell logits come from every cell."""
    crops, masks = padded_crops(group)
    present, usable = usable_mask(group)
    batch = BagBatch(to_device(crops, device).float() / 255.0, to_device(masks, device).float(),
                     to_device(present, device))
    embeddings = model.embed_instances(batch)
    pooled = model.pool(embeddings, to_device(usable, device))
    every_cell = model.pool(embeddings, batch.valid)
    return GroupOutput(torch.sigmoid(pooled.image_logits.float()).cpu().numpy(),
                       torch.sigmoid(every_cell.cell_logits.float()).cpu().numpy(),
                       pooled.attention.float().cpu().numpy(), usable)


FAMILY = register_family(ModelFamily(
    name="crop", config_class=MILConfig, inputs="crops", build=build, warm_start_config=warm_start_config,
    training_data=training_data, predict_group=predict_group, pixel_maps=False,
))
