"""A trained model is a folder: config.json, weights.safetensors, thresholds.json, metrics.json.

`load_model(folder)` needs nothing else and never unpickles: it reads the files (`mil.model_files`, the format)
and builds the model of the family named in config.json through the family registry (`mil.families`), the way
timm's `create_model` builds a registered architecture. This module is the public face of a model folder; the
families themselves read folders through `mil.model_files`, so nothing here is imported back by them.
"""

from __future__ import annotations

from mil.families import build_model, load_model
from mil.model_files import (
    FORMAT_VERSION,
    REQUIRED_FILES,
    LoadedModel,
    ModelFolderError,
    save_model_folder,
)

__all__ = ["FORMAT_VERSION", "REQUIRED_FILES", "LoadedModel", "ModelFolderError", "build_model", "load_model",
           "save_model_folder"]
