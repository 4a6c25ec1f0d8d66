"""A trained model is a folder: config.json, weights.safetensors, thresholds.json, metrics.json.

`load_model(folder)` needs nothing else and never unpickles. config.json holds the architecture (`model`, whose
`family` says which model it is: "crop" = `MILConfig` / `MILModel`, "dense" = `DenseConfig` / `DenseMILModel`),
how it was trained (`training`) and the format version.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hpa_cells.classes import CLASS_NAMES
from mil.config import ModelConfig, model_config_from_dict
from mil.thresholds import load_thresholds, save_thresholds

FORMAT_VERSION = 1
REQUIRED_FILES = ("config.json", "weights.safetensors", "thresholds.json", "metrics.json")


class ModelFolderError(ValueError):
    """A model folder that is incomplete or unreadable; the message names the folder and file."""


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
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")
    save_thresholds(folder / "thresholds.json", thresholds, CLASS_NAMES[: model.config.num_classes])
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float) + "\n")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "weights.safetensors.tmp"), metadata={"format_version": str(FORMAT_VERSION)})
    os.replace(folder / "weights.safetensors.tmp", folder / "weights.safetensors")
    return folder


def build_model(config: ModelConfig) -> torch.nn.Module:
    """The untrained module of a config's family."""
    if config.family == "crop":
        from mil.model import MILModel

        return MILModel(config)
    if config.family == "dense":
        from mil.dense_model import DenseMILModel

        return DenseMILModel(config)
    raise ModelFolderError(f"unknown model family {config.family!r}")


def load_model(folder: str | os.PathLike[str], device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild a trained model from its folder (eval mode, on `device`)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise ModelFolderError(f"{folder} is not a complete model folder: missing {', '.join(missing)}")
    try:
        record = json.loads((folder / "config.json").read_text())
    except json.JSONDecodeError as err:
        raise ModelFolderError(f"{folder / 'config.json'}: invalid JSON ({err})") from err
    if record.get("format_version") != FORMAT_VERSION:
        raise ModelFolderError(
            f"{folder / 'config.json'}: format_version {record.get('format_version')!r}, this code reads {FORMAT_VERSION}"
        )
    config = model_config_from_dict(record["model"], source=str(folder / "config.json"))
    model = build_model(config)
    state = load_file(str(folder / "weights.safetensors"))
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ModelFolderError(f"{folder / 'weights.safetensors'} does not fit the architecture in config.json: {err}") from err
    thresholds = load_thresholds(folder / "thresholds.json", config.num_classes)
    metrics = json.loads((folder / "metrics.json").read_text())
    return LoadedModel(model.to(device).eval(), config, thresholds, metrics, record.get("training", {}), folder)
