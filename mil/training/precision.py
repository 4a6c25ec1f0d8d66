"""The arithmetic and memory layout of a training run on its device (`TrainConfig.precision`, `train.py --precision`).

- "auto": bf16 autocast on a CUDA GPU with native bfloat16 (`hpa_cells.devices.supports_bf16`: compute capability
  8.0 and later), fp16 autocast with loss scaling on older CUDA GPUs (what training on CUDA did before the option
  existed), fp32 on the CPU. bf16 keeps fp32's exponent range and needs no loss scaling; fp16 does
  (`torch.amp.GradScaler`). Losses and metrics are computed in fp32 either way (the loop casts the logits).
- "fp32", "bf16", "fp16": as asked; bf16 and fp16 need a CUDA GPU (bf16 one that has it), else a `TrainingError`.
- On CUDA the model's 4-D weights and the encoder's input use the channels_last (NHWC) layout, which the GPU's
  convolution kernels run fastest on. Saved weights keep the standard layout: the checkpoint and model-folder
  writers make every tensor contiguous.
- `to_device` copies a collated batch (any dataclass of tensors) to the device; from pinned memory the copy is
  asynchronous (`non_blocking`), so the next batch's copy overlaps the current step.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import torch
from torch import nn

from hpa_cells.devices import supports_bf16
from mil.training.config import PRECISIONS, TrainingError


def resolve_precision(option: str, device: torch.device) -> str:
    """The precision a run with `--precision option` uses on `device`: "fp32", "bf16" or "fp16"."""
    if option not in PRECISIONS:
        raise TrainingError(f"--precision {option!r}: use one of {', '.join(PRECISIONS)}")
    cuda = device.type == "cuda"
    if option == "auto":
        if not cuda:
            return "fp32"
        return "bf16" if supports_bf16(str(device)) else "fp16"
    if option != "fp32" and not cuda:
        raise TrainingError(f"--precision {option} needs a CUDA GPU, and this run is on {device}; use --precision "
                            "fp32 or auto")
    if option == "bf16" and not supports_bf16(str(device)):
        name = torch.cuda.get_device_name(device)
        raise TrainingError(f"--precision bf16: the GPU {name} ({device}) has no native bfloat16 (compute "
                            "capability < 8.0); use --precision fp16 or auto")
    return option


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The forward pass's autocast context: none for fp32, else bf16 or fp16 on the device."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(precision: str) -> torch.amp.GradScaler:
    """Loss scaling, enabled for fp16 only (a disabled scaler passes the loss and the step through unchanged)."""
    return torch.amp.GradScaler("cuda", enabled=precision == "fp16")


def _channels_last_input(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: 4-D tensor inputs in channels_last layout."""
    return tuple(a.contiguous(memory_format=torch.channels_last) if isinstance(a, torch.Tensor) and a.ndim == 4
                 else a for a in args)


def use_channels_last(model: nn.Module, encoder: nn.Module, device: torch.device) -> bool:
    """On CUDA: the model's 4-D weights and `encoder`'s input in channels_last; returns whether it did (not on
    the CPU, where the standard layout is kept so CPU runs repeat earlier ones exactly)."""
    if device.type != "cuda":
        return False
    model.to(memory_format=torch.channels_last)
    encoder.register_forward_pre_hook(_channels_last_input)
    return True


def to_device(value: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """`value` with every tensor on `device`: a tensor, or a dataclass (a collated batch) whose fields are
    tensors, None or such dataclasses; anything else is returned as it is."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=non_blocking)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(value, **{f.name: to_device(getattr(value, f.name), device, non_blocking)
                                             for f in dataclasses.fields(value) if f.init})
    return value
