"""Building and loading models of any registered family (like timm's `create_model`): looked up by the family name
in the config, never by importing the family's module."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from mil.config import ConfigError, ModelConfig
from mil.families._registry import family_names, get_family
from mil.model_files import LoadedModel, ModelConfigFileError, loaded_model, read_config_record


def model_config_from_dict(data: dict, source: str = "<dict>") -> ModelConfig:
    """The config of the family named by `data["family"]` ("crop" when absent, as in the first model folders)."""
    family = data.get("family", "crop")
    if family not in family_names():
        raise ConfigError(f"{source}: unknown model family {family!r}; known: {', '.join(family_names())}")
    return get_family(family).config_class.from_dict(data, source)


def build_model(config: ModelConfig, encoder_weights: str | None = None) -> nn.Module:
    """The module of a config's family: untrained, or its encoder started from `encoder_weights`."""
    return get_family(config.family).build(config, encoder_weights)


def load_model(folder: str | os.PathLike[str], device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild a trained model from its folder (eval mode, on `device`); ModelFolderError naming the folder and
    file for anything missing, cut or inconsistent."""
    folder = Path(folder)
    record = read_config_record(folder)
    try:
        config = model_config_from_dict(record["model"], source=str(folder / "config.json"))
        family = get_family(config.family)
        model = family.build(config, None)
    except ConfigError as err:
        message = str(err) if str(folder) in str(err) else f"{folder / 'config.json'}: {err}"
        raise ModelConfigFileError(message) from err
    family.load_weights(model, folder)
    return loaded_model(model, config, record, folder, device)
