"""The model-family registry: `register_family(ModelFamily(...))` in a family's module, `get_family(name)` anywhere.

A family is one kind of MIL model (the crop MIL, the dense field model, any later one): everything the rest of the
code needs from it is a field of its `ModelFamily`, looked up by the name saved in config.json, never switched on
a string. This module imports no family; the package `mil.families` imports each family's module to register it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from mil.config import ConfigError
from mil.model_files import load_weights

_FAMILIES: dict[str, ModelFamily] = {}


def _encoder_attribute(module: nn.Module) -> nn.Module:
    """The default `encoder_of`: the module's `encoder` attribute."""
    return module.encoder


@dataclass(frozen=True)
class TrainingData:
    """What the shared training loop needs to read a cache for one family: `make_dataset(cache_path,
    image_indices, train)` gives a dataset of the images (with `cache`, `image_indices`, `labels`, `set_epoch`),
    and `collate` turns its items into an object with `.batch` (with `.to`, `.labels`, `.valid`)."""

    make_dataset: Callable[[Path, Sequence[int], bool], Dataset]
    collate: Callable


@dataclass(frozen=True)
class ModelFamily:
    """One registered model family.

    name: saved as `family` in config.json. config_class: its config dataclass (`from_dict`, `to_dict`).
    inputs: what it reads of a cache, "crops" (cell crops and masks) or "fields" (whole images with their label
    maps); the input standardisation is measured on the same. build(config, encoder_weights): the module (untrained
    unless `encoder_weights` names a local checkpoint or a folder the family can start from); its forward takes a
    collated `.batch` and returns image_logits and cell_logits. load_weights(module, folder): a model folder's
    weights into the module. warm_start_config(config, folder): the config adjusted to start from the model folder
    `folder` (e.g. its input standardisation). training_data(model_config, train_config): the datasets and
    collate of the training loop (`train_config` is a `mil.training.TrainConfig`). predict_group(module, bags,
    device): one forward pass over a list of `mil.prediction_batches.BagInput` -> `GroupOutput`.
    pixel_maps: whether predict_group returns per-pixel class maps. encoder_of(module): the module's encoder (the
    part `--freeze-encoder-epochs` holds fixed; by default its `encoder` attribute).
    """

    name: str
    config_class: type
    inputs: str
    build: Callable[[Any, str | None], nn.Module]
    warm_start_config: Callable[[Any, str | os.PathLike[str]], Any]
    training_data: Callable[[Any, Any], TrainingData]
    predict_group: Callable[[nn.Module, list, str | torch.device], Any]
    pixel_maps: bool = False
    load_weights: Callable[[nn.Module, str | os.PathLike[str]], None] = field(default=load_weights)
    encoder_of: Callable[[nn.Module], nn.Module] = field(default=_encoder_attribute)


def register_family(family: ModelFamily) -> ModelFamily:
    """Add `family` to the registry under `family.name` (once); returns it."""
    if family.name in _FAMILIES:
        raise ValueError(f"model family {family.name!r} is already registered")
    if family.inputs not in ("crops", "fields"):
        raise ValueError(f"model family {family.name!r}: inputs must be 'crops' or 'fields', got {family.inputs!r}")
    _FAMILIES[family.name] = family
    return family


def family_names() -> list[str]:
    """The registered family names, sorted."""
    return sorted(_FAMILIES)


def get_family(name: str) -> ModelFamily:
    """The registered family `name`; ConfigError naming the registered ones otherwise."""
    if name not in _FAMILIES:
        raise ConfigError(f"unknown model family {name!r}; registered families: {', '.join(family_names())}")
    return _FAMILIES[name]
