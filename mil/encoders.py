"""Instance encoders: any timm model by name, turned into a cell-crop embedder with 4 or 5 input channels.

`create_encoder(name, in_chans=4)` wraps `timm.create_model(name, pretrained=False, in_chans=..., num_classes=0)`
(the classifier removed, global pooling kept), so every timm architecture works by name. Nothing is ever
downloaded: `weights=PATH` loads a local timm checkpoint (``.safetensors``, or a torch state dict read with
``weights_only=True``) and adapts its first convolution from the checkpoint's channel count (3 for ImageNet
weights) to the 4 HPA channels (+1 for the cell-mask channel) with timm's `adapt_input_conv`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

from mil.config import ConfigError

logger = logging.getLogger(__name__)

EXAMPLE_ENCODERS = ("resnet10t", "resnet18", "resnet50", "efficientnet_b0", "convnext_nano")
LIST_HINT = "python -c \"import timm; print(timm.list_models())\" lists them all"


class EncoderWeightsError(ValueError):
    """A local encoder checkpoint that is missing or does not fit the chosen architecture."""


class UnknownEncoderError(ConfigError):
    """An encoder name that timm (or segmentation-models-pytorch) does not know; the message suggests names."""


def _suggestions(name: str, known: list[str], examples: tuple[str, ...] = EXAMPLE_ENCODERS) -> str:
    import difflib

    close = difflib.get_close_matches(name, known, n=4, cutoff=0.6)
    return f"close names: {', '.join(close)}" if close else f"e.g. {', '.join(e for e in examples if e in known)}"


def check_encoder_name(name: str, option: str = "--encoder") -> None:
    """UnknownEncoderError unless `name` is a timm model name (what the crop family's encoder is)."""
    import timm

    if not timm.is_model(name):
        raise UnknownEncoderError(f"{option} {name}: not a timm model name ({_suggestions(name, timm.list_models())}; "
                                  f"{LIST_HINT})")


def check_dense_encoder_name(name: str, option: str = "--dense-encoder") -> None:
    """UnknownEncoderError unless `name` is a segmentation-models-pytorch encoder, or tu-NAME of a timm model."""
    if name.startswith("tu-"):
        import timm

        if not timm.is_model(name[3:]):
            raise UnknownEncoderError(f"{option} {name}: {name[3:]!r} is not a timm model name "
                                      f"({_suggestions(name[3:], timm.list_models())}; {LIST_HINT})")
        return
    from segmentation_models_pytorch.encoders import get_encoder_names

    known = get_encoder_names()
    if name not in known:
        raise UnknownEncoderError(f"{option} {name}: not a segmentation-models-pytorch encoder "
                                  f"({_suggestions(name, known, ('resnet18', 'resnet34', 'resnet50', 'efficientnet-b0'))}; or tu-NAME for any timm model, e.g. tu-resnet10t)")


class InstanceEncoder(nn.Module):
    """A timm backbone that maps `N,C,S,S` cell crops to `N,D` embeddings (`D = num_features`)."""

    def __init__(self, name: str, in_chans: int = 4, weights: str | os.PathLike[str] | None = None,
                 drop_rate: float = 0.0) -> None:
        super().__init__()
        import timm

        if not timm.is_model(name):
            raise UnknownEncoderError(f"unknown timm encoder {name!r}; see timm.list_models() for the available names "
                                      f"({_suggestions(name, timm.list_models())})")
        self.name = name
        self.in_chans = in_chans
        self.backbone = timm.create_model(name, pretrained=False, in_chans=in_chans, num_classes=0, drop_rate=drop_rate)
        # timm's `num_features` is the width before a head conv (mobilenetv3_small_050: 288, forward gives 1024);
        # `head_hidden_size` is what forward returns with num_classes=0, where a model defines it.
        self.num_features: int = int(getattr(self.backbone, "head_hidden_size", None) or self.backbone.num_features)
        if weights is not None:
            load_local_encoder_weights(self.backbone, Path(weights), in_chans)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        if crops.ndim != 4 or crops.shape[1] != self.in_chans:
            raise ValueError(f"encoder {self.name} expects N,{self.in_chans},S,S crops, got {tuple(crops.shape)}")
        return self.backbone(crops)


def create_encoder(name: str, in_chans: int = 4, weights: str | os.PathLike[str] | None = None,
                   drop_rate: float = 0.0) -> InstanceEncoder:
    """Build an instance encoder by timm name (e.g. "resnet18", "efficientnet_b0", "resnet10t")."""
    return InstanceEncoder(name, in_chans=in_chans, weights=weights, drop_rate=drop_rate)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise EncoderWeightsError(f"encoder weights not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many unrelated types for a bad file
        raise EncoderWeightsError(f"{path} could not be read as a torch state dict: {err}") from err
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise EncoderWeightsError(f"{path} holds a {type(state).__name__}, not a state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_local_encoder_weights(backbone: nn.Module, path: Path, in_chans: int) -> None:
    """Load a local timm checkpoint into `backbone`, adapting the first conv to `in_chans` channels.

    The classifier of the checkpoint is dropped (the backbone has none); any other mismatch is an error
    naming the file and the first offending keys.
    """
    from timm.models import adapt_input_conv

    state = _read_state_dict(path)
    first_conv = backbone.pretrained_cfg.get("first_conv")
    if first_conv and f"{first_conv}.weight" in state:
        weight = state[f"{first_conv}.weight"]
        if weight.shape[1] != in_chans:
            state[f"{first_conv}.weight"] = adapt_input_conv(in_chans, weight.float(), base_chans=weight.shape[1])
            logger.info("adapted %s of %s from %d to %d input channels", first_conv, path, weight.shape[1], in_chans)
    classifier = backbone.pretrained_cfg.get("classifier")
    if classifier:
        state = {k: v for k, v in state.items() if not k.startswith(f"{classifier}.")}
    try:
        missing, unexpected = backbone.load_state_dict(state, strict=False)
    except RuntimeError as err:  # strict=False still raises on tensors of the wrong shape
        raise EncoderWeightsError(f"{path} does not fit encoder {backbone.__class__.__name__}: {err}") from err
    if missing or unexpected:
        raise EncoderWeightsError(
            f"{path} does not fit encoder {backbone.__class__.__name__}: missing {list(missing)[:3]}, "
            f"unexpected {list(unexpected)[:3]}"
        )
