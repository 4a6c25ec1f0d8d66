"""The training loop's checkpoint: written after every epoch through `hpa_cells.checkpoints` (safetensors + JSON +
the manifest written last, so a save killed at any point still resumes and a torn set is refused), so rerunning
the same command resumes.

Tensor names: `model.*` (the module's state), `opt.{i}.*` (AdamW's per-parameter state), `best.*` (the weights of
the best epoch so far); the JSON holds the epoch, the history, the best epoch and the run's settings (model,
training, and the cache's identity: `mil.training.resume`). Checkpoints written before `hpa_cells.checkpoints` (no
token) or before the manifest still resume.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from hpa_cells.checkpoints import (
    checkpoint_exists,
    load_checkpoint,
    optimizer_tensors,
    restore_optimizer,
    save_checkpoint,
)
from mil.config import ModelConfig
from mil.training.config import TrainConfig
from mil.training.finetune import check_resumed_start
from mil.training.resume import check_settings


def run_settings(model_config: ModelConfig, config: TrainConfig, cache: dict) -> dict:
    """What a checkpoint must match to be resumed: the model config, the training config (epochs excepted) and the
    cache's identity (`mil.training.resume.cache_identity`), as they read back from JSON."""
    settings = {"model": model_config.to_dict(), "training": {**asdict(config), "epochs": None}, "cache": cache}
    return json.loads(json.dumps(settings, default=str))


def fresh_state(settings: dict) -> dict:
    """The loop state of a run that starts at epoch 0."""
    return {"epoch": 0, "history": [], "best_val_loss": None, "best_epoch": 0, "stale_epochs": 0,
            "settings": settings}


def has_checkpoint(folder: Path) -> bool:
    return checkpoint_exists(folder)


def save_training_checkpoint(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict,
                             best_weights: dict[str, torch.Tensor]) -> None:
    """Write the model, optimizer and best weights (tensors) and the loop `state` (JSON) into `folder`."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update(optimizer_tensors(optimizer, "opt"))
    tensors.update({f"best.{k}": v for k, v in best_weights.items()})
    save_checkpoint(folder, tensors, state)


def load_training_checkpoint(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                             settings: dict, init_weights_sha256: str | None = None
                             ) -> tuple[dict, dict[str, torch.Tensor]]:
    """Restore the model and optimizer from `folder`; returns (loop state, best weights). InitFolderError when
    the checkpoint's run started from another --init folder (or weights, `init_weights_sha256`); TrainingError
    (a ValueError) naming each difference when it was written with other `settings` (training settings added
    later read as their old defaults); `hpa_cells.checkpoints.CheckpointError` when the set is torn or incomplete.
    `mil.training.loop` makes the same checks on the JSON state before building the model."""
    tensors, state = load_checkpoint(folder)
    check_resumed_checkpoint(folder, state, settings, init_weights_sha256)
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    restore_optimizer(optimizer, tensors, "opt")
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
    return state, best


def check_resumed_checkpoint(folder: Path, state: dict, settings: dict, init_weights_sha256: str | None,
                             with_standardisation: bool = True) -> None:
    """The checkpoint state's run must have started from the same --init weights and used the same settings (the
    input standardisation, measured on the training cells, is left out with `with_standardisation=False`)."""
    check_resumed_start(folder, state, settings["training"].get("init_from"), init_weights_sha256)
    check_settings(folder, state.get("settings") or {}, settings, with_standardisation)
