"""The one meaning of `--device` for every command: "auto" (cuda when torch sees a GPU, else cpu), "cpu",
"cuda", "cuda:N", or anything else torch names; and what every run summary records about the device it used.

torch is imported inside the functions: the core package does not need it to import.
"""

from __future__ import annotations

import os
from typing import Any

DEVICE_CHOICES_TEXT = "auto (cuda when a GPU is visible, else cpu), cpu, cuda, cuda:N"


class DeviceError(ValueError):
    """A device that cannot be used here (e.g. cuda on a machine without a visible GPU)."""


def resolve_device(name: str | None) -> str:
    """The torch device string for `name`: "auto" (or None) -> "cuda" when `torch.cuda.is_available()`, else
    "cpu". An explicit cuda device on a machine where torch sees no GPU raises `DeviceError` with the reason,
    instead of failing later inside a network."""
    import torch

    text = "auto" if name is None else str(name).strip()
    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(text)
    except RuntimeError as err:
        raise DeviceError(f"--device {text!r} is not a torch device (use {DEVICE_CHOICES_TEXT})") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            built = torch.version.cuda or "no CUDA"
            raise DeviceError(f"--device {text}: torch sees no CUDA GPU on this machine (torch {torch.__version__} "
                              f"built with {built}; CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r});"
                              " use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"--device {text}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return str(device)


def supports_bf16(device: str) -> bool:
    """True when `device` is a CUDA GPU with native bfloat16 (compute capability >= 8.0, e.g. A100, H100, H200)."""
    import torch

    if not str(device).startswith("cuda") or not torch.cuda.is_available():
        return False
    return bool(torch.cuda.is_bf16_supported())


def describe_device(device: str) -> dict[str, Any]:
    """What a run summary records about its device: the resolved name, the GPU model and memory, CPU threads,
    torch and CUDA versions, bf16 support."""
    import torch

    info: dict[str, Any] = {"device": str(device), "torch": torch.__version__,
                            "cpu_threads": torch.get_num_threads()}
    if str(device).startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device).index or 0
        props = torch.cuda.get_device_properties(index)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    compute_capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda,
                    bf16=supports_bf16(device))
    return info


def device_line(device: str) -> str:
    """One summary line: `device: cuda (NVIDIA H200, 139.8 GiB, bf16)` or `device: cpu (2 threads)`."""
    info = describe_device(device)
    if "gpu" in info:
        return (f"device: {info['device']} ({info['gpu']}, {info['gpu_memory_gib']} GiB"
                f"{', bf16' if info['bf16'] else ''})")
    return f"device: {info['device']} ({info['cpu_threads']} threads)"
