"""How a MIL model is trained: `TrainConfig`, saved in the model folder's config.json (`training`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from hpa_cells.devices import resolve_device as resolve_device_name
from hpa_cells.qc_flags import DEFAULT_EXCLUDE_FLAGS

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
"""The values of `TrainConfig.precision` (`train.py --precision`)."""

SETTINGS_ADDED_LATER = {"dense_window": None, "mosaic_bags": 0, "init_from": None,
                        "init_standardisation": "keep", "freeze_encoder_epochs": 0, "labels": None,
                        "split_file": None, "precision": "auto", "topk_cells": 0, "topk_weight": 1.0,
                        "pseudo_labels": None, "pseudo_label_weight": 1.0,
                        "mosaic_fraction": 0.0}
"""TrainConfig fields added after checkpoints were first written, with the value older runs had in effect."""


class TrainingError(ValueError):
    """A training run that cannot start or resume as asked (too few labelled images, an --out folder holding a
    finished model or a run with other settings, ...); the message is one line naming what to change."""


@dataclass(frozen=True)
class TrainConfig:
    """How a MIL model is trained (saved in the model folder's config.json). `max_cells` applies to the crop
    family only (a dense model sees every usable cell of a field at once)."""

    epochs: int = 30
    batch_size: int = 8
    max_cells: int = 12
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: int = 1
    loss: str = "bce"
    focal_gamma: float = 2.0
    negative_cell_weight: float = 0.5
    class_weighting: bool = False
    val_fraction: float = 0.2
    folds: int = 0
    fold: int = 0
    patience: int = 8
    seed: int = 0
    num_workers: int = 0
    device: str = "auto"
    precision: str = "auto"
    """Arithmetic of the forward pass: "auto" (bf16 autocast on a CUDA GPU with bfloat16, fp16 with loss scaling
    on other CUDA GPUs, fp32 on the CPU), "fp32", "bf16" or "fp16"; see `mil.training.precision`."""
    exclude_flags: tuple[str, ...] = DEFAULT_EXCLUDE_FLAGS
    encoder_weights: str | None = None
    topk_cells: int = 0
    """The top-k instance loss (`mil.training.losses.topk_instance_loss`): for every class an image has, its
    `topk_cells` highest-scoring cells are pulled towards the class, weighted by `topk_weight`; 0 = off."""
    topk_weight: float = 1.0
    pseudo_labels: str | None = None
    """Self-training (`mil.self_training`): a per-cell pseudo-label CSV (image_id, cell_id, labels, uncertain) whose
    known entries train the cell logits beside the image loss, weighted by `pseudo_label_weight`."""
    pseudo_label_weight: float = 1.0
    cell_labels: str | None = None
    """Per-cell label CSV (image_id, cell_id, labels): train the cells directly (the fully supervised upper
    bound) instead of from image labels; see `mil.cell_labels`."""
    dense_window: int | None = None
    """Dense family: train on random square windows of this many pixels of each field at the model's input size
    (a multiple of 32; cells pool their pixels inside the window); validation and prediction see whole fields.
    None trains on whole fields."""
    mosaic_bags: int = 0
    """Crop family: this many extra bags per epoch, each mixing the usable cells of 2-4 single-label training
    images with different labels (bag label: the union), drawn afresh every epoch from the training images only
    (`mil.mosaics.BagsWithMosaics`); 0 = none."""
    mosaic_fraction: float = 0.0
    """Crop family: mosaic bags per epoch as a fraction of the training images (0.25: one mosaic bag for every
    four images), instead of the fixed count `mosaic_bags`; 0 = none."""
    init_from: str | None = None
    """Fine-tuning: a trained model folder of the same family and architecture to start from (all its weights,
    encoder and head); see `mil.training.finetune`."""
    init_standardisation: str = "keep"
    """Fine-tuning: "keep" the `init_from` model's input standardisation, or "recompute" it on the new training
    cells (as a fresh run does)."""
    freeze_encoder_epochs: int = 0
    """The encoder (its parameters and batch-norm statistics) is held fixed for this many first epochs; then
    everything trains."""
    labels: str | None = None
    """An image label CSV (the 2018 `Id,Target` or 2021 `ID,Label` scheme) used instead of the cache's labels,
    without rewriting the cache; cache images it does not list count as unlabelled (left out of training). Its
    sha256 is recorded with the run (`mil.training.resume`)."""
    split_file: str | None = None
    """A JSON file {"train": [image ids], "validation": [image ids]} that fixes the split (overrides val_fraction
    and folds); see `mil.training.splits`."""
    notes: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.negative_cell_weight < 0:
            raise ValueError(f"negative_cell_weight must be >= 0, got {self.negative_cell_weight}")
        if self.loss not in ("bce", "focal"):
            raise ValueError(f"loss must be 'bce' or 'focal', got {self.loss!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.epochs <= 0 or self.batch_size <= 0 or self.max_cells <= 0:
            raise ValueError("epochs, batch_size and max_cells must be positive")
        if self.folds == 0 and not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.folds < 0 or self.folds == 1:
            raise ValueError(f"folds must be 0 (one shuffled split) or at least 2, got {self.folds}")
        if self.patience < 1:
            raise ValueError(f"patience must be at least 1 epoch, got {self.patience}")
        if self.folds and not 0 <= self.fold < self.folds:
            raise ValueError(f"fold must be in 0..{self.folds - 1}, got {self.fold}")
        if self.topk_cells < 0 or self.topk_weight < 0 or self.pseudo_label_weight < 0:
            raise ValueError(f"topk_cells, topk_weight and pseudo_label_weight must be >= 0, got {self.topk_cells}, "
                             f"{self.topk_weight}, {self.pseudo_label_weight}")
        if self.pseudo_labels is not None and self.cell_labels is not None:
            raise ValueError("pseudo-labels (pseudo_labels) and per-cell labels (cell_labels) exclude each other")
        if self.mosaic_bags < 0:
            raise ValueError(f"mosaic_bags must be >= 0, got {self.mosaic_bags}")
        if not 0.0 <= self.mosaic_fraction <= 4.0 or (self.mosaic_bags and self.mosaic_fraction):
            raise ValueError(f"mosaic_fraction must be in [0, 4] and exclude mosaic_bags, got {self.mosaic_fraction} "
                             f"with mosaic_bags {self.mosaic_bags}")
        if (self.mosaic_bags or self.mosaic_fraction) and self.cell_labels is not None:
            raise ValueError("mosaic bags (mosaic_bags) cannot be combined with per-cell label training (cell_labels)")
        if (self.mosaic_bags or self.mosaic_fraction) and self.labels is not None:
            raise ValueError("mosaic bags (mosaic_bags) cannot be combined with a label file (labels) yet: mosaics "
                             "take their labels from the cache")
        if self.dense_window is not None and (self.dense_window < 32 or self.dense_window % 32):
            raise ValueError(f"dense_window must be a multiple of 32 and >= 32 (or None), got {self.dense_window}")
        if self.init_standardisation not in ("keep", "recompute"):
            raise ValueError(f"init_standardisation must be 'keep' or 'recompute', got {self.init_standardisation!r}")
        if self.freeze_encoder_epochs < 0:
            raise ValueError(f"freeze_encoder_epochs must be >= 0, got {self.freeze_encoder_epochs}")
        if self.init_from is not None and self.encoder_weights is not None:
            raise ValueError("init_from (--init) and encoder_weights (--encoder-weights) exclude each other: a "
                             "fine-tuned model takes every weight from its --init folder")


def resolve_device(name: str) -> torch.device:
    """The device `name` means (`hpa_cells.devices.resolve_device`: "auto" -> cuda when a GPU is visible, else
    cpu; `DeviceError` for cuda without a GPU), as a torch device."""
    return torch.device(resolve_device_name(name))
