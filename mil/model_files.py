"""The files of a model folder: config.json, weights.safetensors, thresholds.json, metrics.json.

This module is the folder's format only (writing it, reading its parts); it builds no model, so every model family
can read folders through it. `mil.model_folder.load_model` turns a folder into a model through the family registry
(`mil.families`). config.json holds the architecture (`model`, whose `family` names the registered family), how
it was trained (`training`) and the format version. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hpa_cells.atomic_files import atomic_output, write_json_atomic
from hpa_cells.classes import CLASS_NAMES
from mil.config import ConfigError, ModelConfig
from mil.thresholds import load_thresholds, save_thresholds

FORMAT_VERSION = 1
REQUIRED_FILES = ("config.json", "weights.safetensors", "thresholds.json", "metrics.json")


def is_trained_model_folder(folder: Path) -> bool:
    """Whether `folder` holds a finished training run (its metrics.json and weights.safetensors, which training
    writes last); a folder with a checkpoint only is a run still going or interrupted."""
    return (Path(folder) / "metrics.json").is_file() and (Path(folder) / "weights.safetensors").is_file()


class ModelFolderError(ValueError):
    """A model folder that is incomplete or unreadable; the message names the folder and file."""


class ModelConfigFileError(ModelFolderError, ConfigError):
    """A model folder whose config.json describes no model this code can build (both a ModelFolderError, what
    commands report, and the ConfigError it comes from)."""


@dataclass
class LoadedModel:
    model: torch.nn.Module
    config: ModelConfig
    thresholds: np.ndarray
    metrics: dict
    training: dict
    folder: Path


def save_model_folder(folder: Path, model: torch.nn.Module, thresholds: np.ndarray, metrics: dict,
                      training: dict) -> Path:
    """Write the four files; weights last and atomically, so a folder with weights.safetensors is complete."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    config = {"format_version": FORMAT_VERSION, "model": model.config.to_dict(), "training": training}
    write_json_atomic(folder / "config.json", config, sort_keys=True, default=str)
    save_thresholds(folder / "thresholds.json", thresholds, CLASS_NAMES[: model.config.num_classes])
    write_json_atomic(folder / "metrics.json", metrics, default=float)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_output(folder / "weights.safetensors") as partial:
        save_file(state, str(partial), metadata={"format_version": str(FORMAT_VERSION)})
    return folder


def read_config_record(folder: str | os.PathLike[str]) -> dict:
    """config.json of a complete model folder of this format version, as a dict (`model`, `training`, ...)."""
    folder = Path(folder)
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise ModelFolderError(f"{folder} is not a complete model folder: missing {', '.join(missing)}")
    try:
        record = json.loads((folder / "config.json").read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelFolderError(f"{folder / 'config.json'}: invalid JSON ({err})") from err
    if not isinstance(record, dict):
        raise ModelFolderError(f"{folder / 'config.json'}: not a JSON object")
    if record.get("format_version") != FORMAT_VERSION:
        raise ModelFolderError(
            f"{folder / 'config.json'}: format_version {record.get('format_version')!r}, this code reads {FORMAT_VERSION}"
        )
    if not isinstance(record.get("model"), dict):
        raise ModelFolderError(f"{folder / 'config.json'}: no 'model' section (the architecture: family, encoder, "
                               "head, ...); the file is not one train.py wrote, or it was edited")
    return record


def load_weights(model: torch.nn.Module, folder: str | os.PathLike[str]) -> None:
    """Load the folder's weights.safetensors into `model` (strict); ModelFolderError when they do not fit."""
    from safetensors.torch import load_file

    path = Path(folder) / "weights.safetensors"
    try:
        state = load_file(str(path))
    except Exception as err:  # safetensors raises its own error type (and OSError) for a cut or damaged file
        raise ModelFolderError(f"{path}: not a readable safetensors file ({err}); the file is cut or damaged, "
                               "copy or train the model again") from err
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ModelFolderError(f"{path} does not fit the architecture in config.json: {err}") from err


def check_model_files(folder: str | os.PathLike[str], num_classes: int) -> None:
    """Read a complete folder's thresholds, metrics and weights header without building the model (what a run
    starting from the folder checks first); ModelFolderError naming the file otherwise."""
    from safetensors import safe_open

    folder = Path(folder)
    _thresholds_and_metrics(folder, num_classes)
    path = folder / "weights.safetensors"
    try:
        with safe_open(str(path), framework="pt") as handle:
            handle.keys()
    except Exception as err:  # safetensors raises its own error type for a cut or damaged file
        raise ModelFolderError(f"{path}: not a readable safetensors file ({err}); the file is cut or damaged, "
                               "copy or train the model again") from err


def _thresholds_and_metrics(folder: Path, num_classes: int) -> tuple[np.ndarray, dict]:
    try:
        thresholds = load_thresholds(folder / "thresholds.json", num_classes)
    except ValueError as err:
        raise ModelFolderError(str(err)) from err
    try:
        metrics = json.loads((folder / "metrics.json").read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelFolderError(f"{folder / 'metrics.json'}: invalid JSON ({err})") from err
    return thresholds, metrics


def loaded_model(model: torch.nn.Module, config: ModelConfig, record: dict, folder: str | os.PathLike[str],
                 device: str | torch.device = "cpu") -> LoadedModel:
    """The `LoadedModel` of a model whose weights are loaded: thresholds and metrics read, eval mode on `device`."""
    folder = Path(folder)
    thresholds, metrics = _thresholds_and_metrics(folder, config.num_classes)
    return LoadedModel(model.to(device).eval(), config, thresholds, metrics, record.get("training", {}), folder)
