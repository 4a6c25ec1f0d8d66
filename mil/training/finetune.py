"""Fine-tuning: a training run that starts from a trained model folder (`TrainConfig.init_from`, `train.py --init`).

The run takes every weight of the folder (encoder and head, strict) through its family in the registry, and keeps
the folder's family and architecture: `start_config` refuses a model config that differs from the folder's in any
setting, listing each difference. The input standardisation is the folder's (`init_standardisation="keep"`) or
measured again on the new training cells (`"recompute"`, as a fresh run measures it). The source weights' sha256
is recorded in the checkpoint and in config.json (`training.init_weights_sha256`), so a model card can say what a
model was fine-tuned from, and a resumed run refuses a source whose weights changed since it started.

`set_encoder_frozen` holds the family's encoder (`ModelFamily.encoder_of`) fixed during the first
`freeze_encoder_epochs`: its parameters get no gradient (AdamW skips them, so their moments are not even created
until they train) and its batch-norm statistics are not updated (eval mode).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from torch import nn

from hpa_cells.file_hashes import sha256_of_file
from mil.config import ConfigError, ModelConfig
from mil.families import ModelFamily, build_model, model_config_from_dict
from mil.model_files import ModelFolderError, check_model_files, read_config_record

ARCHITECTURE_IGNORED = ("channel_mean", "channel_std")
"""Model config keys fine-tuning may change: the input standardisation (see `init_standardisation`)."""


class InitFolderError(ValueError):
    """A fine-tuning start that cannot be used; the message names the --init folder (and the --out folder)."""


@dataclass(frozen=True)
class InitSource:
    """The model folder a fine-tuning run starts from: its path as given, model config and weights' sha256."""

    folder: str
    model_config: ModelConfig
    weights_sha256: str



def _check_buildable(config: ModelConfig, source: Path) -> None:
    """ConfigError naming `source` when the config's architecture cannot be built (an unknown encoder name), as
    `load_model` says it, before training reads any data."""
    try:
        build_model(config)
    except ConfigError as err:
        raise ConfigError(str(err) if str(source) in str(err) else f"{source}: {err}") from err


def read_init_source(folder: str | os.PathLike[str]) -> InitSource:
    """The complete model folder `folder`; InitFolderError naming it (and the missing file) otherwise."""
    path = Path(folder)
    if not path.is_dir():
        raise InitFolderError(f"--init {folder}: no such model folder")
    try:
        record = read_config_record(path)
        config = model_config_from_dict(record["model"], source=str(path / "config.json"))
        check_model_files(path, config.num_classes)
        _check_buildable(config, path / "config.json")
    except (ModelFolderError, ConfigError) as err:
        raise InitFolderError(f"--init {folder}: not a usable model folder: {err}") from err
    return InitSource(str(folder), config, sha256_of_file(path / "weights.safetensors"))


def architecture_differences(source: ModelConfig, requested: ModelConfig) -> list[str]:
    """Every model setting (input standardisation aside) in which `requested` differs from `source`, as
    "name: <source value> in the folder, <requested value> in this run"."""
    a, b = source.to_dict(), requested.to_dict()
    return [f"{key}: {a.get(key)!r} in the folder, {b.get(key)!r} in this run"
            for key in sorted(set(a) | set(b)) if key not in ARCHITECTURE_IGNORED and a.get(key) != b.get(key)]


def start_config(requested: ModelConfig, source: InitSource, standardisation: str) -> ModelConfig:
    """The model config a fine-tuning run trains: `requested` checked to be the folder's family and architecture,
    with the folder's input standardisation ("keep") or none yet, to be measured on the training cells
    ("recompute"). InitFolderError naming the folder and every differing setting otherwise."""
    family = source.model_config.family
    if requested.family != family:
        raise InitFolderError(f"--init {source.folder} holds a {family} model, and this run trains a "
                              f"{requested.family} model: fine-tuning keeps the family (--family {family})")
    differences = architecture_differences(source.model_config, requested)
    if differences:
        raise InitFolderError(
            f"--init {source.folder}: this run's architecture differs from the folder's in "
            f"{len(differences)} setting(s): {'; '.join(differences)}. Fine-tuning keeps the folder's architecture: "
            "leave these options out (they are taken from the folder) or give the folder's values")
    if standardisation == "keep":
        return replace(requested, channel_mean=source.model_config.channel_mean,
                       channel_std=source.model_config.channel_std)
    return replace(requested, channel_mean=None, channel_std=None)


def check_out_folder(out_dir: Path, init_from: str) -> None:
    """Fine-tuning writes a new model folder: InitFolderError when --out is the --init folder itself."""
    if out_dir.exists() and out_dir.resolve() == Path(init_from).resolve():
        raise InitFolderError(f"--out {out_dir} is the --init folder: fine-tuning writes a new model folder, "
                              "choose another --out")


def describe_start(init_from: str | None) -> str:
    return "scratch (no --init)" if init_from is None else f"--init {init_from}"


def check_resumed_start(checkpoint_dir: Path, state: dict, init_from: str | None,
                        weights_sha256: str | None) -> None:
    """A checkpoint resumes only the run that started from the same folder with the same weights; InitFolderError
    naming the --out folder and both starts otherwise."""
    stored = (state.get("settings") or {}).get("training", {}).get("init_from")
    out = checkpoint_dir.parent
    if stored != init_from:
        raise InitFolderError(f"{out} holds a run started from {describe_start(stored)}, and this run starts from "
                              f"{describe_start(init_from)}: rerun with the same start to resume it, or choose "
                              "a new --out folder")
    stored_sha = state.get("init_weights_sha256")
    if init_from is not None and stored_sha is not None and stored_sha != weights_sha256:
        raise InitFolderError(f"--init {init_from}: its weights changed since the run in {out} started from them "
                              f"(sha256 {stored_sha[:12]}... then, {weights_sha256[:12]}... now): choose a new "
                              "--out folder")


def set_encoder_frozen(model: nn.Module, family: ModelFamily, frozen: bool) -> None:
    """Hold the family's encoder fixed (no gradients, batch-norm statistics not updated) or let it train. Call
    after `model.train()`: freezing puts the encoder in eval mode."""
    encoder = family.encoder_of(model)
    for parameter in encoder.parameters():
        parameter.requires_grad_(not frozen)
    if frozen:
        encoder.eval()
