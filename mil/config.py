"""Typed, validated settings of a MIL model; saved as config.json inside every model folder."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from hpa_cells.classes import NUM_CLASSES


class ConfigError(ValueError):
    """A model configuration that is invalid, or a config.json that cannot be read."""


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

    def __post_init__(self) -> None:
        from mil.pooling import list_heads

        if self.head not in list_heads():
            raise ConfigError(f"unknown head {self.head!r}; registered heads: {', '.join(list_heads())}")
        if self.input_size < 16 or self.input_size % 8:
            raise ConfigError(f"input_size must be a multiple of 8 and >= 16, got {self.input_size}")
        if self.num_classes <= 0:
            raise ConfigError(f"num_classes must be positive, got {self.num_classes}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def in_chans(self) -> int:
        return 5 if self.use_mask_channel else 4

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "<dict>") -> MILConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown MIL config keys {unknown}")
        return cls(**data)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
