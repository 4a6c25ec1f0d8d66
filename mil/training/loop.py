"""Training a MIL model of any registered family from image-level labels only, resumably, into a model folder.

Every family shares this loop (`train_model`); a family only supplies its datasets, collate and module through
the registry (`mil.families`). The split is multilabel-stratified (iterative stratification, Sechidis et al.
2011): either a shuffled train/validation split or fold `fold` of `folds` as validation. AdamW with a warm-up +
cosine schedule, BCE or focal loss with optional class weighting (`mil.training.losses`), early stopping on
validation loss, per-class thresholds fitted on the validation predictions of the best epoch. A checkpoint
(`mil.training.checkpoint`) is written after every epoch; rerunning the same command resumes from it. Seeded and
deterministic on CPU; on CUDA bf16 (or fp16) autocast, channels_last, pinned memory and asynchronous copies
(`mil.training.precision`), and no host-device synchronisation per step from the loop itself (losses stay on the
device until the epoch ends). With `TrainConfig.init_from` the run fine-tunes a trained model folder, optionally
with the encoder held fixed for the first epochs (`mil.training.finetune`).

Run under torchrun, each process trains as one rank of the process group (`mil.training.distributed`): sharded
training bags (`mil.training.loaders`), DDP-averaged gradients, gathered validation
(`mil.training.validation`), rank 0's loop state broadcast every epoch, rank 0 alone writing files.
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
from torch import nn
from torch.utils.data import DataLoader

from hpa_cells.cache import CellCache
from hpa_cells.classes import CLASS_NAMES
from hpa_cells.devices import describe_device
from hpa_cells.metrics import macro_f1, per_class_f1
from mil.bags import measure_channel_statistics
from mil.config import DenseConfig, MILConfig, ModelConfig
from mil.families import ModelFamily, get_family
from mil.model_folder import save_model_folder
from mil.thresholds import fit_thresholds
from mil.training.checkpoint import (
    check_resumed_checkpoint,
    fresh_state,
    has_checkpoint,
    load_training_checkpoint,
    run_settings,
    save_training_checkpoint,
)
from mil.training.config import TrainConfig, TrainingError
from mil.training.distributed import (
    Ranks,
    barrier,
    broadcast_from_main,
    check_same_start,
    current_ranks,
    gather_objects,
    rank_device,
    sum_over_ranks,
    wrap_for_training,
)
from mil.training.finetune import (
    InitSource,
    check_out_folder,
    read_init_source,
    set_encoder_frozen,
    start_config,
)
from mil.training.loaders import EpochSampler, make_loader
from mil.training.losses import batch_loss, class_pos_weight, initialise_class_bias
from mil.training.precision import autocast, grad_scaler, resolve_precision, to_device, use_channels_last
from mil.training.resume import RelabelledImages, cache_identity, label_override, refuse_finished
from mil.training.resume import check_out_folder as check_finished_folder
from mil.training.splits import split_from_file
from mil.training.validation import predict_bags

LOG_EVERY = 10
"""Steps between progress-bar loss updates (the loop's only host-device synchronisation inside an epoch; the
crop model's gather of the real cells of a padded batch, `mil.model`, makes one per step of its own)."""

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
    """Everything one training run works with, made by `_prepare` (see the module docstring). `model` is the
    module itself (what is saved); `trainable` what the steps call: the module, or its DDP wrapper for the
    parameters that train now (`trained_names`)."""

    family: ModelFamily
    model_config: ModelConfig
    config: TrainConfig
    device: torch.device
    precision: str
    ranks: Ranks
    train_set: object
    val_set: object
    sampler: EpochSampler
    train_loader: DataLoader
    val_loader: DataLoader
    model: nn.Module
    optimizer: torch.optim.Optimizer
    pos_weight: torch.Tensor | None
    scaler: torch.amp.GradScaler
    provenance: object
    source: InitSource | None = None
    trainable: nn.Module | None = None
    trained_names: tuple[str, ...] = ()
    cells_seen: int = 0
    images_seen: int = 0
    train_seconds: float = 0.0


def _cache_labels(cache: CellCache, config: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """(labels `M,28`, has_labels `M`) of the cache's images: the cache's, or those of `config.labels`."""
    if config.labels is not None:
        return label_override(cache, config.labels)
    return cache.labels, cache.has_labels


def _check_enough_images(cache_path: Path, count: int, config: TrainConfig) -> None:
    """TrainingError when `count` labelled images cannot be split as the config asks."""
    source = f"{cache_path}" + (f" with --labels {config.labels}" if config.labels is not None else "")
    if count < 2:
        raise TrainingError(f"{source}: {count} labelled images; training needs labelled images (at least 2: one "
                            "to train on, one to validate)")
    if config.folds and count < config.folds:
        raise TrainingError(f"{source}: {count} labelled images, fewer than the {config.folds} folds asked for; "
                            f"{config.folds} folds need at least {config.folds} labelled images (lower --folds)")


def _split_cache(cache_path: Path, config: TrainConfig) -> tuple[np.ndarray, np.ndarray, object, np.ndarray | None]:
    """(training image indices, validation image indices, the cache's provenance, the label file's `M,28` labels
    or None) over the labelled images: the split file's images when `config.split_file` is set, else a
    stratified split (`split_indices`)."""
    with CellCache(cache_path) as cache:
        all_labels, has_labels = _cache_labels(cache, config)
        labelled = np.flatnonzero(has_labels)
        _check_enough_images(cache_path, int(labelled.size), config)
        labels = all_labels[labelled]
        provenance = cache.provenance
        if config.split_file:
            train_idx, val_idx = split_from_file(Path(config.split_file), cache.image_ids, has_labels, cache_path)
            return train_idx, val_idx, provenance, (all_labels if config.labels else None)
    train_rows, val_rows = split_indices(labels, config)
    return labelled[train_rows], labelled[val_rows], provenance, (all_labels if config.labels else None)


def _model_config(model_config: ModelConfig, config: TrainConfig, source: InitSource | None,
                  family: ModelFamily, train_set) -> ModelConfig:
    """The model config with its input standardisation: measured on the training cells unless it is set, or kept
    from the --init folder (`start_config` set it)."""
    if source is not None and config.init_standardisation == "keep":
        logger.info("fine-tuning from %s, keeping its input standardisation", source.folder)
        return model_config
    if model_config.channel_mean is None:
        mean, std = measure_channel_statistics(train_set, family.inputs, seed=config.seed)
        model_config = replace(model_config, channel_mean=mean, channel_std=std)
        logger.info("input standardisation measured on the training cells: mean %s, std %s",
                    ", ".join(f"{v:.4f}" for v in mean), ", ".join(f"{v:.4f}" for v in std))
    return model_config


def _build(family: ModelFamily, model_config: ModelConfig, config: TrainConfig, source: InitSource | None,
           train_set, device: torch.device) -> nn.Module:
    """The module to train: every weight from the --init folder, or new (encoder from `encoder_weights` if set)
    with the class biases at the training labels' prior."""
    if source is None:
        model = family.build(model_config, config.encoder_weights)
        initialise_class_bias(model, train_set.labels.mean(axis=0))
    else:
        model = family.build(model_config, None)
        family.load_weights(model, source.folder)
    return model.to(device)


def _datasets(family: ModelFamily, model_config: ModelConfig, config: TrainConfig, cache_path: Path) -> tuple:
    """(training set, validation set, the data's collate, the cache's provenance), relabelled from
    `config.labels` when given."""
    train_idx, val_idx, provenance, relabel = _split_cache(cache_path, config)
    data = family.training_data(model_config, config)
    train_set = data.make_dataset(cache_path, train_idx, True)
    val_set = data.make_dataset(cache_path, val_idx, False)
    if relabel is not None:
        train_set, val_set = RelabelledImages(train_set, relabel), RelabelledImages(val_set, relabel)
    return train_set, val_set, data.collate, provenance


def _loaders(run_data: tuple, config: TrainConfig, ranks: Ranks, device: torch.device
             ) -> tuple[EpochSampler, DataLoader, DataLoader]:
    """(the training sampler, the training loader, the validation loader) of this rank's share."""
    train_set, val_set, collate = run_data
    sampler = EpochSampler(len(train_set), config.seed, shuffle=True, rank=ranks.rank, world_size=ranks.world_size)
    val_sampler = EpochSampler(len(val_set), rank=ranks.rank, world_size=ranks.world_size)
    train_loader = make_loader(train_set, collate, config.batch_size, sampler, config.num_workers, device,
                               config.seed)
    val_loader = make_loader(val_set, collate, config.batch_size, val_sampler, config.num_workers, device,
                             config.seed)
    return sampler, train_loader, val_loader


def _prepare(cache_path: Path, model_config: ModelConfig, config: TrainConfig, source: InitSource | None,
             ranks: Ranks) -> _Run:
    """Split, datasets, input standardisation, loaders, module, optimizer: every random draw in the same order
    as always (so a seed gives the same run). `model_config` is the one to train (`start_config` applied)."""
    family = get_family(model_config.family)
    device = rank_device(config.device, ranks)
    precision = resolve_precision(config.precision, device)
    torch.manual_seed(config.seed)
    train_set, val_set, collate, provenance = _datasets(family, model_config, config, cache_path)
    if len(train_set) == 0 or len(val_set) == 0:
        raise TrainingError(f"{cache_path}: after QC exclusion ({', '.join(config.exclude_flags)}) the split has "
                         f"{len(train_set)} training and {len(val_set)} validation images with usable cells")
    model_config = _model_config(model_config, config, source, family, train_set)
    sampler, train_loader, val_loader = _loaders((train_set, val_set, collate), config, ranks, device)
    model = _build(family, model_config, config, source, train_set, device)
    use_channels_last(model, family.encoder_of(model), device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    pos_weight = class_pos_weight(train_set.labels, device) if config.class_weighting else None
    return _Run(family, model_config, config, device, precision, ranks, train_set, val_set, sampler, train_loader,
                val_loader, model, optimizer, pos_weight, grad_scaler(precision), provenance, source)


def _trainable(run: _Run) -> nn.Module:
    """What the steps call: the module, or its DDP wrapper, made again when the parameters that train changed
    (a frozen encoder starting to train: DDP reduces the gradients of the parameters it was made with)."""
    names = tuple(name for name, parameter in run.model.named_parameters() if parameter.requires_grad)
    if run.trainable is None or names != run.trained_names:
        unused = run.config.cell_labels is not None  # per-cell losses leave the image pooling without gradient
        run.trainable = wrap_for_training(run.model, run.ranks, run.device, unused)
        run.trained_names = names
    return run.trainable


def _step(run: _Run, trainable: nn.Module, collated) -> torch.Tensor:
    """One optimizer step on a collated batch; returns the loss, still on the device (no synchronisation)."""
    non_blocking = run.device.type == "cuda"
    batch = to_device(collated.batch, run.device, non_blocking)
    with autocast(run.device, run.precision):
        output = trainable(batch)
    cell_targets = getattr(collated, "cell_labels", None)  # only crop bags carry per-cell labels
    if cell_targets is not None:
        cell_targets = cell_targets.to(run.device, non_blocking=non_blocking)
    loss = batch_loss(output, batch, cell_targets, run.config, run.pos_weight)
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.step(run.optimizer)
    run.scaler.update()
    return loss.detach()


def _train_epoch(run: _Run, epoch: int) -> list[float]:
    """One epoch over this rank's training bags (seeded by epoch, so a resumed run matches an uninterrupted one);
    returns the batch losses and adds to the run's cell, image and time counters."""
    from tqdm import tqdm

    config = run.config
    run.train_set.set_epoch(epoch)
    run.sampler.set_epoch(epoch)
    # dropout draws from the global RNG: seed it per epoch so a resumed run matches an uninterrupted one
    torch.manual_seed(int(np.random.SeedSequence([config.seed, epoch]).generate_state(1)[0]))
    run.model.train()
    if config.freeze_encoder_epochs:
        set_encoder_frozen(run.model, run.family, epoch < config.freeze_encoder_epochs)
    trainable = _trainable(run)
    steps_per_epoch = max(1, len(run.train_loader))
    losses: list[torch.Tensor] = []
    bar = tqdm(run.train_loader, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False, disable=not run.ranks.main)
    for step, collated in enumerate(bar):
        for group in run.optimizer.param_groups:
            group["lr"] = learning_rate(epoch + step / steps_per_epoch, config)
        losses.append(_step(run, trainable, collated))
        valid = collated.batch.valid  # still the host copy: counting its cells needs no synchronisation
        run.cells_seen += int(valid.sum())
        run.images_seen += int(valid.shape[0])
        if run.ranks.main and (step + 1) % LOG_EVERY == 0:
            bar.set_postfix(loss=f"{float(torch.stack(losses[-LOG_EVERY:]).mean()):.4f}")
    return torch.stack(losses).cpu().tolist() if losses else []


def _epoch_record(run: _Run, epoch: int, losses: list[float], started: float) -> dict:
    """Validate after an epoch: its history row (losses, macro F1 at 0.5, learning rate, seconds), over every
    rank's training steps and the whole validation set."""
    losses = [v for part in gather_objects(losses, run.ranks) for v in part]
    val_probs, val_targets, val_loss = predict_bags(run.model, run.val_loader, run.device, run.precision, run.ranks)
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


def _update_state(state: dict, record: dict, ranks: Ranks) -> dict:
    """The loop state after an epoch's `record` (best epoch, epochs without improvement), as rank 0 has it: every
    rank takes rank 0's, so they keep or stop together."""
    state["history"].append(record)
    val_loss = record["val_loss"]
    if state["best_val_loss"] is None or val_loss < state["best_val_loss"] - 1e-5:
        state.update(best_val_loss=val_loss, best_epoch=record["epoch"], stale_epochs=0)
    else:
        state["stale_epochs"] += 1
    state["epoch"] = record["epoch"]
    return broadcast_from_main(state, ranks)


def _run_epochs(run: _Run, checkpoint_dir: Path, state: dict, best_weights: dict) -> tuple[dict, dict]:
    """Train from `state["epoch"]` to `config.epochs` (or an early stop), keeping the best weights and writing a
    checkpoint after every epoch (rank 0); returns (the loop state, the best weights)."""
    config = run.config
    for epoch in range(state["epoch"], config.epochs):
        if state["stale_epochs"] >= config.patience:
            logger.info("early stop: validation loss has not improved for %d epochs", config.patience)
            break
        started = time.time()
        losses = _train_epoch(run, epoch)
        run.train_seconds += time.time() - started
        state = _update_state(state, _epoch_record(run, epoch, losses, started), run.ranks)
        if state["best_epoch"] == epoch + 1:
            best_weights = {k: v.detach().cpu().clone() for k, v in run.model.state_dict().items()}
        if run.ranks.main:
            save_training_checkpoint(checkpoint_dir, run.model, run.optimizer, state, best_weights)
    return state, best_weights


def _trained_on(run: _Run) -> dict:
    """Where and how this run trained (metrics.json and config.json `trained_on`): the device
    (`hpa_cells.devices.describe_device`; rank 0's), the precision used, the number of processes, their process
    group's backend (None: one process without DDP) and the global batch (bags per optimizer step over all)."""
    return {"device": describe_device(str(run.device)), "precision": run.precision,
            "world_size": run.ranks.world_size, "distributed_backend": run.ranks.backend,
            "global_batch_size": run.config.batch_size * run.ranks.world_size}


def _final_metrics(run: _Run, state: dict, started: float) -> tuple[dict, np.ndarray]:
    """(metrics.json's content, thresholds) of the best weights, which the model holds now. Throughput counts
    every rank's cells over rank 0's training time."""
    val_probs, val_targets, val_loss = predict_bags(run.model, run.val_loader, run.device, run.precision, run.ranks)
    thresholds = fit_thresholds(val_probs, val_targets)
    f1 = per_class_f1(val_targets, val_probs >= thresholds)
    seconds = run.train_seconds
    cells, images = sum_over_ranks([run.cells_seen, run.images_seen], run.ranks)
    metrics = {
        "best_epoch": state["best_epoch"],
        "epochs_run": state["epoch"],
        "val_loss": val_loss,
        "val_macro_f1": macro_f1(val_targets, val_probs >= thresholds),
        "val_macro_f1_at_0.5": macro_f1(val_targets, val_probs >= 0.5),
        "val_per_class_f1": {CLASS_NAMES[k]: (None if np.isnan(v) else float(v)) for k, v in enumerate(f1)},
        "n_train_images": len(run.train_set.image_indices),  # mosaic bags are not images
        "n_val_images": len(run.val_set),
        "train_image_ids": [run.train_set.cache.image_ids[i] for i in run.train_set.image_indices],
        "val_image_ids": [run.val_set.cache.image_ids[i] for i in run.val_set.image_indices],
        "train_seconds_this_run": round(seconds, 1),
        "train_cells_per_second": round(cells / seconds, 1) if seconds else None,
        "train_images_per_second": round(images / seconds, 2) if seconds else None,
        "total_seconds_this_run": round(time.time() - started, 1),
        "trained_on": _trained_on(run),
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


def _start(cache_path: Path, out_dir: Path, model_config: ModelConfig, config: TrainConfig, overwrite: bool
           ) -> tuple[ModelConfig, InitSource | None, dict, dict | None]:
    """Every check that needs no weights, before anything is built: (the model config to train, the --init
    source, the cache's identity, the checkpoint state to resume or None). Refuses an --out folder holding a
    finished model (unless `overwrite`) and a checkpoint of a run with other settings, naming each difference."""
    source = None
    if config.init_from is not None:
        check_out_folder(out_dir, config.init_from)
        source = read_init_source(config.init_from)
        model_config = start_config(model_config, source, config.init_standardisation)
    identity = cache_identity(cache_path, config)
    state = check_finished_folder(out_dir, config, overwrite)
    if state is not None:
        init_sha = source.weights_sha256 if source is not None else None
        settings = run_settings(model_config, config, identity)
        check_resumed_checkpoint(out_dir / "checkpoint", state, settings, init_sha, with_standardisation=False)
        refuse_finished(out_dir, state, config)
    return model_config, source, identity, state


def _clear_out_folder(out_dir: Path) -> None:
    """--overwrite: the folder's finished model and checkpoint go before the new run writes its first epoch."""
    import shutil

    for name in ("weights.safetensors", "checkpoint"):
        path = out_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
            logger.info("--overwrite: removed the finished model's %s", path)


def _resume(run: _Run, out_dir: Path, resume_state: dict | None, identity: dict) -> tuple[dict, dict]:
    """(the loop state, the best weights so far): fresh, or restored from the checkpoint into the module and the
    optimizer (every rank reads the same checkpoint; `check_same_start` has made sure they see the same one)."""
    checkpoint_dir = out_dir / "checkpoint"
    settings = run_settings(run.model_config, run.config, identity)
    init_sha = run.source.weights_sha256 if run.source is not None else None
    state, best_weights = {**fresh_state(settings), "init_weights_sha256": init_sha}, {}
    if resume_state is not None and has_checkpoint(checkpoint_dir):
        state, best_weights = load_training_checkpoint(checkpoint_dir, run.model, run.optimizer, settings, init_sha)
        logger.info("resuming from epoch %d (%s)", state["epoch"], checkpoint_dir)
        before = state.get("world_size", 1)
        if before != run.ranks.world_size:
            logger.warning("%s was trained by %d process(es) and resumes with %d: --batch-size %d is per process, so "
                           "the global batch changes from %d to %d bags per step", checkpoint_dir, before,
                           run.ranks.world_size, run.config.batch_size, before * run.config.batch_size,
                           run.ranks.world_size * run.config.batch_size)
    state["world_size"] = run.ranks.world_size
    return state, best_weights


def train_model(cache_path: Path, out_dir: Path, model_config: ModelConfig, config: TrainConfig,
                overwrite: bool = False) -> dict:
    """Train a model of the config's family on a cell cache and write the model folder `out_dir`; returns
    metrics.json's content. Resumes from `out_dir/checkpoint` when a run with the same settings left one. With
    `config.init_from`, fine-tunes the model in that folder (`mil.training.finetune`). A folder holding a finished
    model is refused (`mil.training.resume`) unless the run continues it with more epochs or `overwrite` is set
    (then it is trained again from scratch). In a process group (torchrun, `mil.training.distributed`) every rank
    calls this; rank 0 writes the folder, and every rank returns the same metrics once it is written."""
    started = time.time()
    ranks = current_ranks()
    model_config, source, identity, resume_state = _start(cache_path, out_dir, model_config, config, overwrite)
    check_same_start(None if resume_state is None else resume_state.get("epoch"), identity["content_sha256"], ranks,
                     out_dir)
    run = _prepare(cache_path, model_config, config, source, ranks)
    if overwrite and ranks.main:
        _clear_out_folder(out_dir)
    if ranks.main:
        out_dir.mkdir(parents=True, exist_ok=True)
    state, best_weights = _resume(run, out_dir, resume_state, identity)
    barrier(ranks)  # every rank has read the checkpoint before rank 0 writes the next one
    state, best_weights = _run_epochs(run, out_dir / "checkpoint", state, best_weights)
    run.model.load_state_dict(best_weights)
    metrics, thresholds = _final_metrics(run, state, started)
    if ranks.main:
        _write_history(state["history"], out_dir)
        training = {**asdict(config), "cache": str(cache_path), "cache_provenance": run.provenance,
                    "cache_content_sha256": identity["content_sha256"], "labels_sha256": identity["labels_sha256"],
                    "init_weights_sha256": run.source.weights_sha256 if run.source is not None else None,
                    "trained_on": _trained_on(run)}
        save_model_folder(out_dir, run.model, thresholds, metrics, training=training)
    barrier(ranks)
    return metrics
