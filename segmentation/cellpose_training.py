"""Training the bundled Cellpose CPnet models with Cellpose's own training pieces, resumably.

The loop is Cellpose 3's `train.train_seg` step for step: flows from `dynamics.labels_to_flows`, Cellpose's
random rotation/flip/rescale augmentation (`transforms.random_rotate_and_resize`, objects rescaled to the
network's `diam_mean`), and Cellpose's loss (`train._loss_fn_seg`: flow MSE + cell-probability BCE). What it
adds is what a CPU training run in a time-limited session needs: a checkpoint (pickle-free safetensors + JSON)
every `checkpoint_every` steps that a rerun resumes from exactly (each step's randomness is seeded by
(seed, step)), a tqdm bar, a periodic AP check on held-out fields, and narrow networks.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from hpa_cells.checkpoints import (
    checkpoint_exists,
    load_checkpoint,
    optimizer_tensors,
    restore_optimizer,
    save_checkpoint,
)
from hpa_cells.instance_metrics import average_precision
from segmentation.cellpose_models import CellposeNetSpec, save_bundled_format, sha256_of_file
from segmentation.cellpose_segmenter import CellposeNetRunner, cellpose_input

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnnotatedField:
    """One training/evaluation field: a `4,H,W` uint8 image and the instance mask to learn (`H,W`)."""

    name: str
    image: np.ndarray
    mask: np.ndarray
    weight: float = 1.0


@dataclass(frozen=True)
class SegmenterTrainConfig:
    """Settings of one CPnet training run (saved next to the weights)."""

    kind: str = "cells"
    nbase: tuple[int, ...] = (2, 16, 32, 64, 256)
    diam_mean: float = 30.0
    steps: int = 600
    batch_size: int = 8
    crop_size: int = 160
    learning_rate: float = 0.005
    weight_decay: float = 1e-5
    warmup_steps: int = 20
    scale_range: float = 0.5
    checkpoint_every: int = 25
    eval_every: int = 100
    seed: int = 0
    use_er: bool = True
    init_weights: str | None = None
    notes: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in ("cells", "nuclei"):
            raise ValueError(f"kind must be 'cells' or 'nuclei', got {self.kind!r}")
        if self.nbase[0] != 2:
            raise ValueError(f"nbase must start with the 2 input channels, got {self.nbase}")
        if self.steps <= 0 or self.batch_size <= 0 or self.crop_size % 16:
            raise ValueError("steps and batch_size must be positive and crop_size a multiple of 16")


def learning_rate_at(step: int, config: SegmenterTrainConfig) -> float:
    """Linear warm-up, then cosine decay to 1% of the peak."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.learning_rate * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _flows_for(masks: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Cellpose's training targets `3,H,W` (cell probability, y flow, x flow) per mask."""
    from cellpose.dynamics import labels_to_flows

    flows = labels_to_flows([m.astype(np.int32) for m in masks], device=torch.device("cpu"))
    return [f[1:].astype(np.float32) for f in flows]


def _median_diameters(masks: Sequence[np.ndarray], where: Sequence[str]) -> np.ndarray:
    from cellpose.utils import diameters

    values = []
    for mask, name in zip(masks, where, strict=True):
        d = float(diameters(mask.astype(np.int32))[0])
        if not d > 0:
            raise ValueError(f"training field {name!r} has no objects in its mask")
        values.append(d)
    return np.asarray(values, np.float32)


def _save_checkpoint(folder: Path, net: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int,
                     history: list[dict]) -> None:
    """Weights (`net.*`), optimizer moments (`opt.{param}.{key}`) and the step/history as one checkpoint
    (`hpa_cells.checkpoints`: each file replaced atomically, a torn pair refused on loading)."""
    tensors = {f"net.{k}": v for k, v in net.state_dict().items()}
    tensors.update(optimizer_tensors(optimizer, prefix="opt"))
    save_checkpoint(folder, tensors, {"step": step, "history": history})


def _load_checkpoint(folder: Path, net: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[int, list[dict]]:
    """Put a checkpoint's weights and optimizer moments back; (step, history). Reads checkpoints written before
    `hpa_cells.checkpoints` too (same tensor names, no token)."""
    tensors, state = load_checkpoint(folder)
    net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
    restore_optimizer(optimizer, tensors, prefix="opt")
    return int(state["step"]), list(state["history"])


def evaluate_network(net: torch.nn.Module, config: SegmenterTrainConfig, fields: Sequence[AnnotatedField],
                     diameter: float | None = None, refine_tolerance: float | None = None,
                     ) -> dict[str, dict[str, float]]:
    """AP@0.5/0.75 of `net` on each field, segmenting it as `CellposeSegmenter` would.

    With `diameter=None` each field is segmented at its true median object diameter (isolates the network's
    quality from the diameter choice); pass the deployment default diameter and `refine_tolerance` (as
    `CellposeSettings.diameter_tolerance`) to measure what users get.
    """
    from cellpose.utils import diameters

    spec = CellposeNetSpec("in-training", Path("."), "safetensors", tuple(config.nbase), config.diam_mean, "")
    scores: dict[str, dict[str, float]] = {}
    net.eval()
    for f in fields:
        d = diameter if diameter is not None else float(diameters(f.mask.astype(np.int32))[0])
        runner = CellposeNetRunner.from_network(net, spec, d)
        pred = runner.segment([cellpose_input(f.image, config.kind, config.use_er)], refine_tolerance)[0]
        ap, _, _, _ = average_precision([f.mask], [pred], thresholds=(0.5, 0.75))
        scores[f.name] = {"ap50": float(ap[0, 0]), "ap75": float(ap[0, 1]), "n_true": int(f.mask.max()),
                          "n_pred": int(len(np.unique(pred)) - 1)}
    return scores


def _new_network(config: SegmenterTrainConfig) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """The CPnet to train (seeded, optionally from `init_weights`) and its AdamW optimizer."""
    from cellpose.resnet_torch import CPnet

    torch.manual_seed(config.seed)
    net = CPnet(list(config.nbase), 3, sz=3, mkldnn=False, max_pool=True, diam_mean=config.diam_mean)
    if config.init_weights:
        from safetensors.torch import load_file

        net.load_state_dict(load_file(config.init_weights), strict=True)
        net.diam_mean.data[:] = config.diam_mean
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    return net, optimizer


@dataclass(frozen=True)
class _TrainingSet:
    """The network inputs, flow targets, object diameters and sampling weights of the training fields."""

    inputs: list[np.ndarray]
    targets: list[np.ndarray]
    diameters: np.ndarray
    probabilities: np.ndarray

    @classmethod
    def of(cls, fields: Sequence[AnnotatedField], config: SegmenterTrainConfig) -> _TrainingSet:
        probs = np.asarray([f.weight for f in fields], np.float64)
        probs /= probs.sum()
        return cls(
            inputs=[cellpose_input(f.image, config.kind, config.use_er) for f in fields],
            targets=_flows_for([f.mask for f in fields]),
            diameters=_median_diameters([f.mask for f in fields], [f.name for f in fields]),
            probabilities=probs,
        )


def _train_step(net: torch.nn.Module, optimizer: torch.optim.Optimizer, data: _TrainingSet,
                config: SegmenterTrainConfig, step: int) -> float:
    """One optimizer step on a batch drawn and augmented with the randomness of (seed, step); returns the loss."""
    from cellpose.train import _loss_fn_seg
    from cellpose.transforms import random_rotate_and_resize

    net.train()
    np.random.seed((config.seed * 1_000_003 + step) % 2**32)  # Cellpose's augmentation draws from np.random
    inds = np.random.choice(len(data.inputs), size=config.batch_size, p=data.probabilities)
    rescale = data.diameters[inds] / config.diam_mean
    x, y = random_rotate_and_resize([data.inputs[i] for i in inds], Y=[data.targets[i] for i in inds],
                                    rescale=rescale, scale_range=config.scale_range,
                                    xy=(config.crop_size, config.crop_size))[:2]
    for group in optimizer.param_groups:
        group["lr"] = learning_rate_at(step, config)
    loss = _loss_fn_seg(y, net(torch.from_numpy(x))[0], torch.device("cpu"))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.detach().item()


def train_segmenter(train: Sequence[AnnotatedField], validation: Sequence[AnnotatedField],
                    config: SegmenterTrainConfig, work_dir: Path, out_weights: Path) -> dict:
    """Train (or resume) one CPnet and write it in the bundled format to `out_weights` (.safetensors + .json).

    Returns the training record written into the .json (config, data, history, validation AP, time).
    """
    from tqdm import tqdm

    if not train:
        raise ValueError("no training fields")
    net, optimizer = _new_network(config)
    data = _TrainingSet.of(train, config)
    net.diam_labels.data[:] = float(data.diameters.mean())

    start, history = 0, []
    if checkpoint_exists(work_dir):  # a manifest alone is a checkpoint too (killed before its renames)
        start, history = _load_checkpoint(work_dir, net, optimizer)
        logger.info("resuming %s training from step %d in %s", config.kind, start, work_dir)
    t0 = time.time()
    running = []
    bar = tqdm(range(start, config.steps), initial=start, total=config.steps, desc=f"train {config.kind} CPnet")
    for step in bar:
        running.append(_train_step(net, optimizer, data, config, step))
        bar.set_postfix(loss=f"{np.mean(running[-20:]):.3f}")
        done = step + 1
        if done % config.eval_every == 0 or done == config.steps:
            record = {"step": done, "train_loss": float(np.mean(running[-config.eval_every:]))}
            if validation:
                scores = evaluate_network(net, config, validation)
                record["val_ap50"] = float(np.mean([s["ap50"] for s in scores.values()]))
                logger.info("step %d: loss %.4f, validation AP@0.5 %.3f", done, record["train_loss"], record["val_ap50"])
            history.append(record)
        if done % config.checkpoint_every == 0 or done == config.steps:
            _save_checkpoint(work_dir, net, optimizer, done, history)
    elapsed = time.time() - t0
    final_scores = evaluate_network(net, config, validation) if validation else {}
    record = {
        "config": {**asdict(config), "nbase": list(config.nbase)},
        "training_fields": [f.name for f in train],
        "validation_fields": [f.name for f in validation],
        "median_training_diameter": float(np.median(data.diameters)),
        "history": history,
        "validation": final_scores,
        "seconds_this_run": round(elapsed, 1),
        "parameters": int(sum(p.numel() for p in net.parameters())),
    }
    save_bundled_format(net, out_weights, {"kind": config.kind, "use_er": config.use_er, "training": record})
    record["sha256"] = sha256_of_file(out_weights)
    return record
