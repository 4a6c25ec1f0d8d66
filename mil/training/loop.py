"""Training a MIL model of any registered family from image-level labels only, resumably, into a model folder.

Every family shares this loop (`train_model`); a family only supplies its datasets, collate and module through
the registry (`mil.families`). The split is multilabel-stratified (iterative stratification, Sechidis et al.
2011): either a shuffled train/validation split or fold `fold` of `folds` as validation. AdamW with a warm-up +
cosine schedule, BCE or focal loss with optional class weighting (`mil.training.losses`), early stopping on
validation loss, per-class thresholds fitted on the validation predictions of the best epoch. A checkpoint
(`mil.training.checkpoint`) is written after every epoch; rerunning the same command resumes from it. Seeded and
deterministic on CPU; mixed precision on CUDA.
"""

from __future__ import annotations

import csv
import logging
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from hpa_cells.cache import CellCache
from hpa_cells.classes import CLASS_NAMES
from hpa_cells.metrics import macro_f1, per_class_f1
from mil.bags import measure_channel_statistics
from mil.config import DenseConfig, MILConfig, ModelConfig
from mil.families import ModelFamily, get_family
from mil.model_folder import save_model_folder
from mil.thresholds import fit_thresholds
from mil.training.checkpoint import (
    fresh_state,
    has_checkpoint,
    load_training_checkpoint,
    run_settings,
    save_training_checkpoint,
)
from mil.training.config import TrainConfig, resolve_device
from mil.training.losses import batch_loss, class_pos_weight, initialise_class_bias
from mil.training.splits import split_from_file

logger = logging.getLogger(__name__)


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


def learning_rate(epoch_progress: float, config: TrainConfig) -> float:
    """Linear warm-up over `warmup_epochs` (from 2 %), then cosine decay to 0 at `epochs`."""
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


def plot_curves(history: list[dict], path: Path) -> None:
    """training_curves.png: train and validation loss, and validation macro F1 at 0.5, per epoch."""
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


def train_mil(cache_path: Path, out_dir: Path, model_config: MILConfig, config: TrainConfig) -> dict:
    """Train a crop MIL model on a cell cache and write the model folder `out_dir`; returns metrics.json's content."""
    if not isinstance(model_config, MILConfig):
        raise TypeError(f"train_mil trains the crop family (MILConfig); got {type(model_config).__name__}")
    return train_model(cache_path, out_dir, model_config, config)


def train_dense(cache_path: Path, out_dir: Path, model_config: DenseConfig, config: TrainConfig) -> dict:
    """Train a dense MIL model on a schema-2 cell cache (it reads the full images) and write the model folder
    `out_dir`; returns metrics.json's content. Same loop, split, loss, thresholds and resuming as `train_mil`."""
    if not isinstance(model_config, DenseConfig):
        raise TypeError(f"train_dense trains the dense family (DenseConfig); got {type(model_config).__name__}")
    return train_model(cache_path, out_dir, model_config, config)


@dataclass
class _Run:
    """Everything one training run works with, made by `_prepare` (see the module docstring)."""

    family: ModelFamily
    model_config: ModelConfig
    config: TrainConfig
    device: torch.device
    train_set: object
    val_set: object
    train_loader: DataLoader
    val_loader: DataLoader
    generator: torch.Generator
    model: nn.Module
    optimizer: torch.optim.Optimizer
    pos_weight: torch.Tensor | None
    scaler: torch.amp.GradScaler
    provenance: object
    cells_seen: int = 0
    images_seen: int = 0
    train_seconds: float = 0.0


def _split_cache(cache_path: Path, config: TrainConfig) -> tuple[np.ndarray, np.ndarray, object]:
    """(training image indices, validation image indices, the cache's provenance) over its labelled images: the
    split file's images when `config.split_file` is set, else a stratified split (`split_indices`)."""
    with CellCache(cache_path) as cache:
        labelled = np.flatnonzero(cache.has_labels)
        if labelled.size < 2:
            raise ValueError(f"{cache_path}: {labelled.size} labelled images; training needs labelled images")
        labels = cache.labels[labelled]
        provenance = cache.provenance
        if config.split_file:
            train_idx, val_idx = split_from_file(Path(config.split_file), cache.image_ids, cache.has_labels,
                                                 cache_path)
            return train_idx, val_idx, provenance
    train_rows, val_rows = split_indices(labels, config)
    return labelled[train_rows], labelled[val_rows], provenance


def _prepare(cache_path: Path, model_config: ModelConfig, config: TrainConfig) -> _Run:
    """Split, datasets, input standardisation, loaders, module, optimizer: every random draw in the same order
    as always (so a seed gives the same run)."""
    family = get_family(model_config.family)
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    train_idx, val_idx, provenance = _split_cache(cache_path, config)
    data = family.training_data(model_config, config)
    train_set = data.make_dataset(cache_path, train_idx, True)
    val_set = data.make_dataset(cache_path, val_idx, False)
    if len(train_set) == 0 or len(val_set) == 0:
        raise ValueError(f"{cache_path}: after QC exclusion ({', '.join(config.exclude_flags)}) the split has "
                         f"{len(train_set)} training and {len(val_set)} validation images with usable cells")
    if model_config.channel_mean is None:
        mean, std = measure_channel_statistics(train_set, family.inputs, seed=config.seed)
        model_config = replace(model_config, channel_mean=mean, channel_std=std)
        logger.info("input standardisation measured on the training cells: mean %s, std %s",
                    ", ".join(f"{v:.4f}" for v in mean), ", ".join(f"{v:.4f}" for v in std))
    generator = torch.Generator().manual_seed(config.seed)
    train_loader = DataLoader(train_set, batch_size=config.batch_size, shuffle=True, collate_fn=data.collate,
                              num_workers=config.num_workers, generator=generator,
                              persistent_workers=False)  # persistent workers keep a stale set_epoch copy
    val_loader = DataLoader(val_set, batch_size=config.batch_size, collate_fn=data.collate,
                            num_workers=config.num_workers)
    model = family.build(model_config, config.encoder_weights).to(device)
    initialise_class_bias(model, train_set.labels.mean(axis=0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    pos_weight = class_pos_weight(train_set.labels, device) if config.class_weighting else None
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    return _Run(family, model_config, config, device, train_set, val_set, train_loader, val_loader, generator,
                model, optimizer, pos_weight, scaler, provenance)


def _train_epoch(run: _Run, epoch: int) -> list[float]:
    """One epoch over the training loader (seeded by epoch, so a resumed run matches an uninterrupted one);
    returns the batch losses and adds to the run's cell, image and time counters."""
    from tqdm import tqdm

    config, device, model, optimizer = run.config, run.device, run.model, run.optimizer
    run.train_set.set_epoch(epoch)
    run.generator.manual_seed(config.seed + epoch)
    # dropout draws from the global RNG: seed it per epoch so a resumed run matches an uninterrupted one
    torch.manual_seed(int(np.random.SeedSequence([config.seed, epoch]).generate_state(1)[0]))
    model.train()
    steps_per_epoch = max(1, math.ceil(len(run.train_set) / config.batch_size))
    losses = []
    bar = tqdm(run.train_loader, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False)
    for step, collated in enumerate(bar):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(epoch + step / steps_per_epoch, config)
        batch = collated.batch.to(device)
        with torch.autocast(device_type=device.type, enabled=device.type == "cuda"):
            output = model(batch)
        cell_targets = getattr(collated, "cell_labels", None)  # only crop bags carry per-cell labels
        if cell_targets is not None:
            cell_targets = cell_targets.to(device)
        loss = batch_loss(output, batch, cell_targets, config, run.pos_weight)
        optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.scaler.step(optimizer)
        run.scaler.update()
        losses.append(loss.detach().item())
        run.cells_seen += int(batch.valid.sum())
        run.images_seen += int(batch.valid.shape[0])
        bar.set_postfix(loss=f"{np.mean(losses[-10:]):.4f}")
    return losses


def _epoch_record(run: _Run, epoch: int, losses: list[float], started: float) -> dict:
    """Validate after an epoch: its history row (losses, macro F1 at 0.5, learning rate, seconds)."""
    val_probs, val_targets, val_loss = predict_bags(run.model, run.val_loader, run.device)
    record = {
        "epoch": epoch + 1,
        "train_loss": float(np.mean(losses)),
        "val_loss": val_loss,
        "val_macro_f1_at_0.5": macro_f1(val_targets, val_probs >= 0.5),
        "lr": run.optimizer.param_groups[0]["lr"],
        "seconds": round(time.time() - started, 2),
    }
    logger.info("epoch %d: train loss %.4f, val loss %.4f, val macro F1@0.5 %.3f", epoch + 1,
                record["train_loss"], val_loss, record["val_macro_f1_at_0.5"])
    return record


def _run_epochs(run: _Run, checkpoint_dir: Path, state: dict, best_weights: dict) -> dict:
    """Train from `state["epoch"]` to `config.epochs` (or an early stop), keeping the best weights and writing a
    checkpoint after every epoch; returns the best weights."""
    config = run.config
    for epoch in range(state["epoch"], config.epochs):
        if state["stale_epochs"] >= config.patience:
            logger.info("early stop: validation loss has not improved for %d epochs", config.patience)
            break
        started = time.time()
        losses = _train_epoch(run, epoch)
        run.train_seconds += time.time() - started
        record = _epoch_record(run, epoch, losses, started)
        state["history"].append(record)
        val_loss = record["val_loss"]
        if state["best_val_loss"] is None or val_loss < state["best_val_loss"] - 1e-5:
            state.update(best_val_loss=val_loss, best_epoch=epoch + 1, stale_epochs=0)
            best_weights = {k: v.detach().cpu().clone() for k, v in run.model.state_dict().items()}
        else:
            state["stale_epochs"] += 1
        state["epoch"] = epoch + 1
        save_training_checkpoint(checkpoint_dir, run.model, run.optimizer, state, best_weights)
    return best_weights


def _final_metrics(run: _Run, state: dict, started: float) -> tuple[dict, np.ndarray]:
    """(metrics.json's content, thresholds) of the best weights, which the model holds now."""
    val_probs, val_targets, val_loss = predict_bags(run.model, run.val_loader, run.device)
    thresholds = fit_thresholds(val_probs, val_targets)
    f1 = per_class_f1(val_targets, val_probs >= thresholds)
    seconds = run.train_seconds
    metrics = {
        "best_epoch": state["best_epoch"],
        "epochs_run": state["epoch"],
        "val_loss": val_loss,
        "val_macro_f1": macro_f1(val_targets, val_probs >= thresholds),
        "val_macro_f1_at_0.5": macro_f1(val_targets, val_probs >= 0.5),
        "val_per_class_f1": {CLASS_NAMES[k]: (None if np.isnan(v) else float(v)) for k, v in enumerate(f1)},
        "n_train_images": len(run.train_set),
        "n_val_images": len(run.val_set),
        "train_image_ids": [run.train_set.cache.image_ids[i] for i in run.train_set.image_indices],
        "val_image_ids": [run.val_set.cache.image_ids[i] for i in run.val_set.image_indices],
        "train_seconds_this_run": round(seconds, 1),
        "train_cells_per_second": round(run.cells_seen / seconds, 1) if seconds else None,
        "train_images_per_second": round(run.images_seen / seconds, 2) if seconds else None,
        "total_seconds_this_run": round(time.time() - started, 1),
        "history": state["history"],
    }
    return metrics, thresholds


def _write_history(history: list[dict], out_dir: Path) -> None:
    """metrics.csv (one row per epoch) and training_curves.png."""
    with (out_dir / "metrics.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    plot_curves(history, out_dir / "training_curves.png")


def train_model(cache_path: Path, out_dir: Path, model_config: ModelConfig, config: TrainConfig) -> dict:
    """Train a model of the config's family on a cell cache and write the model folder `out_dir`; returns
    metrics.json's content. Resumes from `out_dir/checkpoint` when a run with the same settings left one."""
    started = time.time()
    out_dir.mkdir(parents=True, exist_ok=True)
    run = _prepare(cache_path, model_config, config)
    checkpoint_dir = out_dir / "checkpoint"
    settings = run_settings(run.model_config, config)
    state, best_weights = fresh_state(settings), {}
    if has_checkpoint(checkpoint_dir):
        state, best_weights = load_training_checkpoint(checkpoint_dir, run.model, run.optimizer, settings)
        logger.info("resuming from epoch %d (%s)", state["epoch"], checkpoint_dir)
    best_weights = _run_epochs(run, checkpoint_dir, state, best_weights)
    run.model.load_state_dict(best_weights)
    metrics, thresholds = _final_metrics(run, state, started)
    _write_history(state["history"], out_dir)
    save_model_folder(out_dir, run.model, thresholds, metrics,
                      training={**asdict(config), "cache": str(cache_path), "cache_provenance": run.provenance})
    return metrics
