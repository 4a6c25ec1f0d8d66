"""Typed, validated settings of a MIL model (crop or dense family); saved as config.json inside every model folder."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from hpa_cells.classes import NUM_CLASSES


class ConfigError(ValueError):
    """A model configuration that is invalid, or a config.json that cannot be read."""


def _check_family_head_and_classes(config_name: str, family: str, expected_family: str, head: str,
                                   num_classes: int) -> None:
    """The checks every model config shares: its family, a registered head, a positive class count."""
    from mil.pooling import list_heads

    if family != expected_family:
        raise ConfigError(f"{config_name} has family {expected_family!r}, got {family!r}")
    if head not in list_heads():
        raise ConfigError(f"unknown head {head!r}; registered heads: {', '.join(list_heads())}")
    if num_classes <= 0:
        raise ConfigError(f"num_classes must be positive, got {num_classes}")


def _check_channel_statistics(config) -> None:
    """channel_mean / channel_std: both None, or 4 values each (red, green, blue, yellow), std positive; lists
    from config.json become tuples."""
    if (config.channel_mean is None) != (config.channel_std is None):
        raise ConfigError("channel_mean and channel_std must be given together")
    if config.channel_mean is None:
        return
    object.__setattr__(config, "channel_mean", tuple(float(v) for v in config.channel_mean))
    object.__setattr__(config, "channel_std", tuple(float(v) for v in config.channel_std))
    if len(config.channel_mean) != 4 or len(config.channel_std) != 4:
        raise ConfigError(f"channel_mean and channel_std need 4 values (red, green, blue, yellow), got "
                          f"{len(config.channel_mean)} and {len(config.channel_std)}")
    if min(config.channel_std) <= 0:
        raise ConfigError(f"channel_std must be positive, got {config.channel_std}")


def _known_keys_only(config_class: type, data: dict, source: str, kind: str) -> dict:
    """`data`, or a ConfigError naming `source` and the keys `config_class` does not have."""
    unknown = sorted(set(data) - {f.name for f in fields(config_class)})
    if unknown:
        raise ConfigError(f"{source}: unknown {kind} config keys {unknown}")
    return data


@dataclass(frozen=True)
class MILConfig:
    """Architecture of a crop-based MIL model.

    encoder: timm model name. head: registered pooling head (see `mil.pooling.list_heads()`).
    use_mask_channel: feed the cell's own mask as a 5th input channel. input_size: crops are resized to this
    many pixels before the encoder (smaller = faster). head_kwargs: extra head arguments (e.g. hidden, pool).
    """

    encoder: str = "resnet10t"
    head: str = "class_gated_attention"
    use_mask_channel: bool = True
    input_size: int = 64
    num_classes: int = NUM_CLASSES
    dropout: float = 0.1
    head_kwargs: dict = field(default_factory=dict)
    family: str = "crop"
    channel_mean: tuple[float, ...] | None = None
    channel_std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        _check_family_head_and_classes("MILConfig", self.family, "crop", self.head, self.num_classes)
        if self.input_size < 16 or self.input_size % 8:
            raise ConfigError(f"input_size must be a multiple of 8 and >= 16, got {self.input_size}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        _check_channel_statistics(self)

    @property
    def in_chans(self) -> int:
        return 5 if self.use_mask_channel else 4

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "<dict>") -> MILConfig:
        return cls(**_known_keys_only(cls, data, source, "MIL"))

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")


DENSE_ARCHITECTURES = ("unet", "fpn")


@dataclass(frozen=True)
class DenseConfig:
    """Architecture of a dense (whole-field) MIL model: a segmentation-models-pytorch network maps the 4-channel
    field to 28 per-pixel class logit maps, which are pooled inside each cell mask into per-cell logits
    (`cell_pool`), then across cells by a registered pooling head (`head`) into the image's logits.

    arch: "unet" or "fpn". encoder: smp encoder name; timm encoders through smp's "tu-" prefix (e.g.
    "tu-resnet10t"). input_size: the field's longer side is resized to this (a multiple of 32) and the rest padded.
    cell_pool: "mean" or "lse" (log-sum-exp, `(1/r) log(mean exp(r x))` with r = `lse_sharpness`).
    decoder_channels: width of the decoder: FPN pyramid channels (its segmentation branch gets half; a multiple
    of 64), U-Net's first decoder block (halved at each following block, at least 16). 64 trains about 2x faster on a CPU than
    smp's defaults (FPN 256/128, U-Net 256..16); None keeps smp's defaults, and is what a config.json written
    before this option loads as.
    head_kwargs: extra head arguments. channel_mean / channel_std: input standardisation as in `MILConfig`
    (measured on the training fields when None).
    """

    arch: str = "fpn"
    encoder: str = "tu-resnet10t"
    head: str = "class_gated_attention"
    cell_pool: str = "mean"
    lse_sharpness: float = 5.0
    input_size: int = 256
    decoder_channels: int | None = 64
    num_classes: int = NUM_CLASSES
    head_kwargs: dict = field(default_factory=dict)
    family: str = "dense"
    channel_mean: tuple[float, ...] | None = None
    channel_std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        from mil.cell_pooling import CELL_POOLS

        _check_family_head_and_classes("DenseConfig", self.family, "dense", self.head, self.num_classes)
        if self.arch not in DENSE_ARCHITECTURES:
            raise ConfigError(f"unknown dense arch {self.arch!r}; choose one of {', '.join(DENSE_ARCHITECTURES)}")
        if self.cell_pool not in CELL_POOLS:
            raise ConfigError(f"unknown cell_pool {self.cell_pool!r}; choose one of {', '.join(CELL_POOLS)}")
        if self.lse_sharpness <= 0:
            raise ConfigError(f"lse_sharpness must be positive, got {self.lse_sharpness}")
        if self.input_size < 32 or self.input_size % 32:
            raise ConfigError(f"input_size must be a multiple of 32 and >= 32, got {self.input_size}")
        if self.decoder_channels is not None:
            # smp's FPN normalises its segmentation branch (half the width) with GroupNorm(32 groups)
            step = 64 if self.arch == "fpn" else 2
            if self.decoder_channels < max(16, step) or self.decoder_channels % step:
                raise ConfigError(f"decoder_channels for {self.arch} must be a multiple of {step} and >= "
                                  f"{max(16, step)} (or None), got {self.decoder_channels}")
        _check_channel_statistics(self)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "<dict>") -> DenseConfig:
        known = _known_keys_only(cls, data, source, "dense model")
        return cls(**({"decoder_channels": None} | known))  # written before the option: smp's default decoder


ModelConfig = MILConfig | DenseConfig
"""A config of either built-in family; `mil.families.model_config_from_dict` reads one by its `family`."""
