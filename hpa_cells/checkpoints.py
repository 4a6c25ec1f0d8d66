"""Training checkpoints, one format for every trainer (the MIL loop and the Cellpose segmenter trainer).

A checkpoint is two files in a folder: `checkpoint.safetensors` (named tensors: network weights, optimizer
moments, anything else a trainer keeps as tensors) and `checkpoint.json` (the trainer's JSON state: epoch or
step, history, settings). Each is replaced atomically, and both carry the same random `checkpoint_token`
(in the safetensors metadata and the JSON), so a pair torn by a crash between the two renames (weights of
one save, state of another) is refused on loading instead of resuming silently with the wrong weights.
Checkpoints written before the token existed load as before.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpa_cells.atomic_files import atomic_output, write_json_atomic

if TYPE_CHECKING:
    import torch

__all__ = [
    "CHECKPOINT_STATE",
    "CHECKPOINT_TENSORS",
    "CheckpointError",
    "load_checkpoint",
    "optimizer_tensors",
    "restore_optimizer",
    "save_checkpoint",
]

CHECKPOINT_TENSORS = "checkpoint.safetensors"
CHECKPOINT_STATE = "checkpoint.json"
TOKEN_KEY = "checkpoint_token"


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be resumed from (missing half, torn pair, unreadable file)."""


def save_checkpoint(folder: str | Path, tensors: Mapping[str, torch.Tensor], state: Mapping[str, Any]) -> Path:
    """Write `tensors` and the JSON-serialisable `state` into `folder`, each file replaced atomically."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(8)
    contiguous = {name: value.detach().cpu().contiguous() for name, value in tensors.items()}
    with atomic_output(folder / CHECKPOINT_TENSORS, fsync=True) as partial:
        save_file(contiguous, str(partial), metadata={TOKEN_KEY: token})
    write_json_atomic(folder / CHECKPOINT_STATE, {**state, TOKEN_KEY: token}, indent=1)
    return folder


def load_checkpoint(folder: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and the state saved by `save_checkpoint` (the state without its token).

    Raises `CheckpointError` naming the folder when a file is missing or the two files come from two saves.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    folder = Path(folder)
    tensor_path, state_path = folder / CHECKPOINT_TENSORS, folder / CHECKPOINT_STATE
    missing = [p.name for p in (tensor_path, state_path) if not p.is_file()]
    if missing:
        raise CheckpointError(f"checkpoint {folder} is incomplete: {', '.join(missing)} missing")
    try:
        state = json.loads(state_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"checkpoint state {state_path} is unreadable: {error}") from error
    with safe_open(str(tensor_path), framework="pt") as handle:
        tensor_token = (handle.metadata() or {}).get(TOKEN_KEY)
    state_token = state.pop(TOKEN_KEY, None)
    if tensor_token != state_token and (tensor_token is not None or state_token is not None):
        raise CheckpointError(
            f"checkpoint {folder} is torn: {CHECKPOINT_TENSORS} and {CHECKPOINT_STATE} come from different "
            f"saves (tokens {tensor_token} and {state_token}); delete the folder to start over")
    return load_file(str(tensor_path)), state


def optimizer_tensors(optimizer: torch.optim.Optimizer, prefix: str = "opt") -> dict[str, torch.Tensor]:
    """The optimizer's per-parameter state as named tensors `{prefix}.{param index}.{key}`."""
    import torch

    tensors = {}
    for index, param in enumerate(p for group in optimizer.param_groups for p in group["params"]):
        for key, value in optimizer.state.get(param, {}).items():
            tensors[f"{prefix}.{index}.{key}"] = torch.as_tensor(value).detach().cpu().reshape(-1) \
                if key == "step" else value.detach().cpu()
    return tensors


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor],
                      prefix: str = "opt") -> None:
    """Put back the per-parameter state written by `optimizer_tensors` (scalar `step` entries reshaped)."""
    for index, param in enumerate(p for group in optimizer.param_groups for p in group["params"]):
        head = f"{prefix}.{index}."
        entries = {name[len(head):]: value for name, value in tensors.items() if name.startswith(head)}
        if entries:
            if "step" in entries:
                entries["step"] = entries["step"].reshape(())
            optimizer.state[param] = entries
