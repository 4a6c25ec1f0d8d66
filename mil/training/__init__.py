"""Training a MIL model of any registered family (see `mil.training.loop`): `TrainConfig` says how, `train_model`
trains into a model folder (`train_mil` / `train_dense` check the family first).

config.py: TrainConfig. losses.py: the losses and the class-bias prior. checkpoint.py: the resumable checkpoint.
finetune.py: starting from a trained model folder (`init_from`) and the frozen-encoder epochs.
loop.py: the shared loop, the split, the schedule, validation and the curves. splits.py: a fixed split from a
JSON file (`TrainConfig.split_file`). Scale: distributed.py (torchrun's process group and DDP: each process one
rank, rank 0 writes), loaders.py (each epoch's order, sharded per rank; persistent workers, pinned memory),
precision.py (`TrainConfig.precision`, autocast, channels_last, device copies), validation.py (validation
predictions, gathered from every rank).
"""

from mil.training.config import SETTINGS_ADDED_LATER, TrainConfig, resolve_device
from mil.training.finetune import InitFolderError, read_init_source
from mil.training.loop import (
           learning_rate,
           plot_curves,
           predict_bags,
           split_indices,
           train_dense,
           train_mil,
           train_model,
)
from mil.training.losses import initialise_class_bias, loss_function, negative_cell_loss

__all__ = ["SETTINGS_ADDED_LATER", "InitFolderError", "TrainConfig", "initialise_class_bias", "learning_rate",
           "loss_function", "negative_cell_loss", "plot_curves", "predict_bags", "read_init_source", "resolve_device",
           "split_indices", "train_dense", "train_mil", "train_model"]
