"""Training a MIL model (crop or dense family) from image-level labels only, resumably, into a model folder.

Both families share one loop (`train_model`); a family only supplies its dataset, collate and module
(`train_mil` for the crop MIL, `train_dense` for the dense model).

The split is multilabel-stratified (iterative stratification, Sechidis et al. 2011): either a shuffled
train/validation split or fold `fold` of `folds` as validation. AdamW with a warm-up + cosine schedule, BCE or
focal loss with optional class weighting, early stopping on validation loss, per-class thresholds fitted on the
validation predictions of the best epoch. A checkpoint (safetensors + JSON, no pickle) is written after every
epoch; rerunning the same command resumes from it. Seeded and deterministic on CPU; mixed precision on CUDA.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from hpa_cells.cache import CellCache
from hpa_cells.classes import CLASS_NAMES
from hpa_cells.metrics import macro_f1, per_class_f1
from mil.bags import DEFAULT_EXCLUDE_FLAGS, BagDataset, collate_bags, measure_channel_statistics
from mil.config import DenseConfig, MILConfig, ModelConfig
from mil.model import MILModel
from mil.model_folder import save_model_folder
from mil.thresholds import fit_thresholds

logger = logging.getLogger(__name__)

SETTINGS_ADDED_LATER = {"dense_window": None}
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
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def split_indices(labels: np.ndarray, config: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) image indices, multilabel-stratified and seeded."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold, MultilabelStratifiedShuffleSplit

    n = labels.shape[0]
    if n < 2:
        raise ValueError(f"need at least 2 labelled images to split, got {n}")
    dummy = np.zeros((n, 1))
    if config.folds:
        splitter = MultilabelStratifiedKFold(n_splits=config.folds, shuffle=True, random_state=config.seed)
        train, val = list(splitter.split(dummy, labels))[config.fold]
    else:
        splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=config.val_fraction, random_state=config.seed)
        train, val = next(splitter.split(dummy, labels))
    return np.sort(train), np.sort(val)


def loss_function(logits: torch.Tensor, targets: torch.Tensor, config: TrainConfig,
                  pos_weight: torch.Tensor | None) -> torch.Tensor:
    if config.loss == "bce":
        return F.binary_cross_entropy_with_logits(logits, targets, pos_weight=pos_weight)
    bce = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=pos_weight, reduction="none")
    p = torch.sigmoid(logits)
    p_t = p * targets + (1 - p) * (1 - targets)
    return ((1 - p_t) ** config.focal_gamma * bce).mean()


def negative_cell_loss(cell_logits: torch.Tensor, valid: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """BCE pushing down the cell logits of classes the cell's image does not have.

    Image labels say more than "some cell has class k": when an image lacks class k, every one of its cells lacks
    it. This uses only image-level labels, and trains the ranking of cells directly, where attention pooling
    alone leaves low-attention cells of positive images unconstrained. Averaged over (real cell, absent class).
    """
    absent = (labels < 0.5).unsqueeze(1) & valid.unsqueeze(-1)  # B,N,K
    if not absent.any():
        return cell_logits.sum() * 0.0
    per_entry = F.binary_cross_entropy_with_logits(cell_logits, torch.zeros_like(cell_logits), reduction="none")
    return per_entry[absent].mean()


def initialise_class_bias(model: nn.Module, prevalence: np.ndarray) -> None:
    """Start every class logit at the log-odds of the class's training prevalence (the prior initialisation of
    Lin et al. 2017): with 28 rare classes a zero bias starts at p = 0.5 and spends the first epoch only
    learning that labels are rare. Prevalence is clipped to [0.01, 0.99]."""
    prior = torch.as_tensor(np.clip(prevalence, 0.01, 0.99), dtype=torch.float32)
    with torch.no_grad():
        bias = model.class_bias()
        bias.copy_(torch.logit(prior).to(bias.device, bias.dtype))


def _learning_rate(epoch_progress: float, config: TrainConfig) -> float:
    if epoch_progress < config.warmup_epochs:
        return config.learning_rate * max(epoch_progress / config.warmup_epochs, 0.02)
    t = (epoch_progress - config.warmup_epochs) / max(1e-9, config.epochs - config.warmup_epochs)
    return config.learning_rate * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


@torch.no_grad()
def predict_bags(model: nn.Module, loader: DataLoader, device: torch.device) -> tuple[np.ndarray, np.ndarray, float]:
    """Image probabilities `N,K`, targets `N,K` and mean BCE over the loader's bags (all cells, no augmentation)."""
    model.eval()
    probs, targets, losses = [], [], []
    for collated in loader:
        batch = collated.batch.to(device)
        logits = model(batch).image_logits.float()
        losses.append(float(F.binary_cross_entropy_with_logits(logits, batch.labels, reduction="sum")))
        probs.append(torch.sigmoid(logits).cpu().numpy())
        targets.append(batch.labels.cpu().numpy())
    p, t = np.concatenate(probs), np.concatenate(targets)
    return p, t, sum(losses) / max(1, t.size)


def _save_checkpoint(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    for index, param in enumerate(p for g in optimizer.param_groups for p in g["params"]):
        for key, value in optimizer.state.get(param, {}).items():
            tensors[f"opt.{index}.{key}"] = torch.as_tensor(value).detach().cpu().reshape(-1).contiguous() \
                if key == "step" else value.detach().cpu().contiguous()
    best = state.pop("best_weights", None)
    if best is not None:
        tensors.update({f"best.{k}": v for k, v in best.items()})
    save_file(tensors, str(folder / "checkpoint.safetensors.tmp"))
    os.replace(folder / "checkpoint.safetensors.tmp", folder / "checkpoint.safetensors")
    (folder / "checkpoint.json.tmp").write_text(json.dumps(state, indent=1))
    os.replace(folder / "checkpoint.json.tmp", folder / "checkpoint.json")


def _load_checkpoint(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    from safetensors.torch import load_file

    tensors = load_file(str(folder / "checkpoint.safetensors"))
    state = json.loads((folder / "checkpoint.json").read_text())
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    for index, param in enumerate(p for g in optimizer.param_groups for p in g["params"]):
        entries = {k.split(".", 2)[2]: v for k, v in tensors.items() if k.startswith(f"opt.{index}.")}
        if entries:
            entries["step"] = entries["step"].reshape(())
            optimizer.state[param] = entries
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
    return state, best


def _plot_curves(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    axes[0].plot(epochs, [h["train_loss"] for h in history], label="train")
    axes[0].plot(epochs, [h["val_loss"] for h in history], label="validation")
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("loss")
    axes[0].legend()
    axes[1].plot(epochs, [h["val_macro_f1_at_0.5"] for h in history], label="val macro F1 @0.5")
    axes[1].set_xlabel("epoch")
    axes[1].set_ylim(0, 1)
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@dataclass(frozen=True)
class ModelFamily:
    """What the shared training loop needs from a model family: datasets over a cache's images (each with
    `cache`, `image_indices`, `labels` and `set_epoch`), a collate returning an object with `.batch` (with `.to`,
    `.labels`, `.valid`), and the untrained module (whose forward returns image_logits and cell_logits)."""

    make_dataset: Callable[[Path, Sequence[int], bool], Dataset]
    collate: Callable
    make_model: Callable[[ModelConfig], nn.Module]
    statistics_source: str
    """what the input standardisation is measured on: "crops" or "fields"."""


def crop_family(config: TrainConfig) -> ModelFamily:
    def make_dataset(cache_path: Path, image_indices: Sequence[int], train: bool) -> Dataset:
        cell_labels = None
        if train and config.cell_labels is not None:
            from mil.cell_labels import cell_label_matrix, read_cell_labels

            with CellCache(cache_path) as cache:
                cell_labels = cell_label_matrix(cache, read_cell_labels(Path(config.cell_labels)),
                                                config.cell_labels, image_indices=image_indices)
            logger.info("cell-supervised training on %d images: %d of their cells carry at least one class (%s)",
                        len(image_indices), int((cell_labels.sum(1) > 0).sum()), config.cell_labels)
        return BagDataset(cache_path, image_indices, config.max_cells if train else None, train=train,
                          seed=config.seed, exclude_flags=config.exclude_flags, cell_labels=cell_labels)

    return ModelFamily(make_dataset, collate_bags,
                       lambda model_config: MILModel(model_config, encoder_weights=config.encoder_weights), "crops")


def dense_family(model_config: DenseConfig, config: TrainConfig) -> ModelFamily:
    if config.cell_labels is not None:
        raise ValueError("cell-supervised training (cell_labels) is implemented for the crop family only")
    from mil.dense_fields import DenseFieldDataset, collate_fields
    from mil.dense_model import DenseMILModel

    def make_dataset(cache_path: Path, image_indices: Sequence[int], train: bool) -> Dataset:
        return DenseFieldDataset(cache_path, image_indices, model_config.input_size, train=train, seed=config.seed,
                                 exclude_flags=config.exclude_flags, window=config.dense_window)

    return ModelFamily(make_dataset, collate_fields,
                       lambda completed: DenseMILModel(completed, encoder_weights=config.encoder_weights), "fields")


def train_mil(cache_path: Path, out_dir: Path, model_config: MILConfig, config: TrainConfig) -> dict:
    """Train a crop MIL model on a cell cache and write the model folder `out_dir`; returns metrics.json's content."""
    if not isinstance(model_config, MILConfig):
        raise TypeError(f"train_mil trains the crop family (MILConfig); got {type(model_config).__name__}")
    return _train_family(cache_path, out_dir, model_config, config, crop_family(config))


def train_dense(cache_path: Path, out_dir: Path, model_config: DenseConfig, config: TrainConfig) -> dict:
    """Train a dense MIL model on a schema-2 cell cache (it reads the full images) and write the model folder
    `out_dir`; returns metrics.json's content. Same loop, split, loss, thresholds and resuming as `train_mil`."""
    if not isinstance(model_config, DenseConfig):
        raise TypeError(f"train_dense trains the dense family (DenseConfig); got {type(model_config).__name__}")
    return _train_family(cache_path, out_dir, model_config, config, dense_family(model_config, config))


def train_model(cache_path: Path, out_dir: Path, model_config: ModelConfig, config: TrainConfig) -> dict:
    """`train_mil` or `train_dense`, by the config's family."""
    if isinstance(model_config, DenseConfig):
        return train_dense(cache_path, out_dir, model_config, config)
    return train_mil(cache_path, out_dir, model_config, config)


def _train_family(cache_path: Path, out_dir: Path, model_config: ModelConfig, config: TrainConfig,
                  family: ModelFamily) -> dict:
    """The training loop shared by every family (see the module docstring)."""
    from tqdm import tqdm

    started = time.time()
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    with CellCache(cache_path) as cache:
        labelled = np.flatnonzero(cache.has_labels)
        if labelled.size < 2:
            raise ValueError(f"{cache_path}: {labelled.size} labelled images; training needs labelled images")
        labels = cache.labels[labelled]
        provenance = cache.provenance
    train_rows, val_rows = split_indices(labels, config)
    train_idx, val_idx = labelled[train_rows], labelled[val_rows]
    train_set = family.make_dataset(cache_path, train_idx, True)
    val_set = family.make_dataset(cache_path, val_idx, False)
    if len(train_set) == 0 or len(val_set) == 0:
        raise ValueError(f"{cache_path}: after QC exclusion ({', '.join(config.exclude_flags)}) the split has "
                         f"{len(train_set)} training and {len(val_set)} validation images with usable cells")
    if model_config.channel_mean is None:
        mean, std = measure_channel_statistics(train_set, family.statistics_source, seed=config.seed)
        model_config = replace(model_config, channel_mean=mean, channel_std=std)
        logger.info("input standardisation measured on the training cells: mean %s, std %s",
                    ", ".join(f"{v:.4f}" for v in mean), ", ".join(f"{v:.4f}" for v in std))
    generator = torch.Generator().manual_seed(config.seed)
    train_loader = DataLoader(train_set, batch_size=config.batch_size, shuffle=True, collate_fn=family.collate,
                              num_workers=config.num_workers, generator=generator,
                              persistent_workers=False)  # persistent workers keep a stale set_epoch copy
    val_loader = DataLoader(val_set, batch_size=config.batch_size, collate_fn=family.collate,
                            num_workers=config.num_workers)
    model = family.make_model(model_config).to(device)
    initialise_class_bias(model, train_set.labels.mean(axis=0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    pos_weight = None
    if config.class_weighting:
        positives = train_set.labels.sum(axis=0)
        weights = np.clip((len(train_set) - positives) / np.maximum(positives, 1), 1.0, 50.0)
        pos_weight = torch.tensor(weights, dtype=torch.float32, device=device)
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    checkpoint_dir = out_dir / "checkpoint"
    settings = {"model": model_config.to_dict(), "training": {**asdict(config), "epochs": None}}
    settings = json.loads(json.dumps(settings, default=str))
    state = {"epoch": 0, "history": [], "best_val_loss": None, "best_epoch": 0, "stale_epochs": 0,
             "settings": settings}
    best_weights: dict[str, torch.Tensor] = {}
    if (checkpoint_dir / "checkpoint.json").is_file():
        state, best_weights = _load_checkpoint(checkpoint_dir, model, optimizer)
        stored = state.get("settings") or {}
        # training settings added later read as their defaults in checkpoints written before them
        stored = {**stored, "training": {**SETTINGS_ADDED_LATER, **stored.get("training", {})}}
        if stored != settings:
            raise ValueError(
                f"{checkpoint_dir} was written by a run with other settings; resume with the same settings "
                f"(only --epochs may change) or choose a new --out folder"
            )
        logger.info("resuming from epoch %d (%s)", state["epoch"], checkpoint_dir)
    steps_per_epoch = max(1, math.ceil(len(train_set) / config.batch_size))
    cells_seen = 0
    images_seen = 0
    train_seconds = 0.0
    for epoch in range(state["epoch"], config.epochs):
        if state["stale_epochs"] >= config.patience:
            logger.info("early stop: validation loss has not improved for %d epochs", config.patience)
            break
        train_set.set_epoch(epoch)
        generator.manual_seed(config.seed + epoch)
        # dropout draws from the global RNG: seed it per epoch so a resumed run matches an uninterrupted one
        torch.manual_seed(int(np.random.SeedSequence([config.seed, epoch]).generate_state(1)[0]))
        model.train()
        t_epoch = time.time()
        losses = []
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False)
        for step, collated in enumerate(bar):
            for group in optimizer.param_groups:
                group["lr"] = _learning_rate(epoch + step / steps_per_epoch, config)
            batch = collated.batch.to(device)
            with torch.autocast(device_type=device.type, enabled=use_amp):
                output = model(batch)
            cell_targets = getattr(collated, "cell_labels", None)  # only crop bags carry per-cell labels
            if cell_targets is not None:  # cell supervision: every real cell has its own target
                valid = batch.valid
                loss = loss_function(output.cell_logits.float()[valid], cell_targets.to(device)[valid],
                                     config, pos_weight)
            else:
                loss = loss_function(output.image_logits.float(), batch.labels, config, pos_weight)
            if config.negative_cell_weight > 0 and cell_targets is None:
                loss = loss + config.negative_cell_weight * negative_cell_loss(
                    output.cell_logits.float(), batch.valid, batch.labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            losses.append(loss.detach().item())
            cells_seen += int(batch.valid.sum())
            images_seen += int(batch.valid.shape[0])
            bar.set_postfix(loss=f"{np.mean(losses[-10:]):.4f}")
        train_seconds += time.time() - t_epoch
        val_probs, val_targets, val_loss = predict_bags(model, val_loader, device)
        record = {
            "epoch": epoch + 1,
            "train_loss": float(np.mean(losses)),
            "val_loss": val_loss,
            "val_macro_f1_at_0.5": macro_f1(val_targets, val_probs >= 0.5),
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": round(time.time() - t_epoch, 2),
        }
        state["history"].append(record)
        logger.info("epoch %d: train loss %.4f, val loss %.4f, val macro F1@0.5 %.3f", epoch + 1,
                    record["train_loss"], val_loss, record["val_macro_f1_at_0.5"])
        if state["best_val_loss"] is None or val_loss < state["best_val_loss"] - 1e-5:
            state.update(best_val_loss=val_loss, best_epoch=epoch + 1, stale_epochs=0)
            best_weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            state["stale_epochs"] += 1
        state["epoch"] = epoch + 1
        _save_checkpoint(checkpoint_dir, model, optimizer, {**state, "best_weights": best_weights})

    model.load_state_dict(best_weights)
    val_probs, val_targets, val_loss = predict_bags(model, val_loader, device)
    thresholds = fit_thresholds(val_probs, val_targets)
    f1 = per_class_f1(val_targets, val_probs >= thresholds)
    metrics = {
        "best_epoch": state["best_epoch"],
        "epochs_run": state["epoch"],
        "val_loss": val_loss,
        "val_macro_f1": macro_f1(val_targets, val_probs >= thresholds),
        "val_macro_f1_at_0.5": macro_f1(val_targets, val_probs >= 0.5),
        "val_per_class_f1": {CLASS_NAMES[k]: (None if np.isnan(v) else float(v)) for k, v in enumerate(f1)},
        "n_train_images": len(train_set),
        "n_val_images": len(val_set),
        "train_image_ids": [train_set.cache.image_ids[i] for i in train_set.image_indices],
        "val_image_ids": [val_set.cache.image_ids[i] for i in val_set.image_indices],
        "train_seconds_this_run": round(train_seconds, 1),
        "train_cells_per_second": round(cells_seen / train_seconds, 1) if train_seconds else None,
        "train_images_per_second": round(images_seen / train_seconds, 2) if train_seconds else None,
        "total_seconds_this_run": round(time.time() - started, 1),
        "history": state["history"],
    }
    with (out_dir / "metrics.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(state["history"][0]))
        writer.writeheader()
        writer.writerows(state["history"])
    _plot_curves(state["history"], out_dir / "training_curves.png")
    save_model_folder(out_dir, model, thresholds, metrics,
                      training={**asdict(config), "cache": str(cache_path), "cache_provenance": provenance})
    return metrics
