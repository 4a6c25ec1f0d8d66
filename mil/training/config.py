"""How a MIL model is trained: `TrainConfig`, saved in the model folder's config.json (`training`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from hpa_cells.qc_flags import DEFAULT_EXCLUDE_FLAGS

SETTINGS_ADDED_LATER = {"dense_window": None, "split_file": None}
"""TrainConfig fields added after checkpoints were first written, with the value older runs had in effect."""


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
    exclude_flags: tuple[str, ...] = DEFAULT_EXCLUDE_FLAGS
    encoder_weights: str | None = None
    cell_labels: str | None = None
    """Per-cell label CSV (image_id, cell_id, labels): train the cells directly (the fully supervised upper
    bound) instead of from image labels; see `mil.cell_labels`."""
    dense_window: int | None = None
    """Dense family: train on random square windows of this many pixels of each field at the model's input size
    (a multiple of 32; cells pool their pixels inside the window); validation and prediction see whole fields.
    None trains on whole fields."""
    split_file: str | None = None
    """A JSON file {"train": [image ids], "validation": [image ids]} that fixes the split (overrides val_fraction
    and folds); see `mil.training.splits`."""
    notes: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.negative_cell_weight < 0:
            raise ValueError(f"negative_cell_weight must be >= 0, got {self.negative_cell_weight}")
        if self.loss not in ("bce", "focal"):
            raise ValueError(f"loss must be 'bce' or 'focal', got {self.loss!r}")
        if self.epochs <= 0 or self.batch_size <= 0 or self.max_cells <= 0:
            raise ValueError("epochs, batch_size and max_cells must be positive")
        if self.folds == 0 and not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.folds and not 0 <= self.fold < self.folds:
            raise ValueError(f"fold must be in 0..{self.folds - 1}, got {self.fold}")
        if self.dense_window is not None and (self.dense_window < 32 or self.dense_window % 32):
            raise ValueError(f"dense_window must be a multiple of 32 and >= 32 (or None), got {self.dense_window}")


def resolve_device(name: str) -> torch.device:
    """"auto" -> cuda when available, else cpu; any other name as torch reads it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
