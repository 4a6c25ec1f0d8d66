"""Training checkpoints, one format for every trainer (the MIL loop and the Cellpose segmenter trainer).

A checkpoint is three files in a folder: `checkpoint.safetensors` (named tensors: network weights, optimizer
moments, anything else a trainer keeps as tensors), `checkpoint.json` (the trainer's JSON state: epoch or step,
history, settings) and `checkpoint.manifest.json`, which names both files with their sha256 and is written last.
The two data files carry the same random `checkpoint_token` (in the safetensors metadata and the JSON).

Saving never leaves a folder that cannot be resumed, wherever it is killed: the new tensors and state are first
written beside the old ones (`.next` names), then the manifest is replaced (the commit: from here on the new
checkpoint is the one), then the two `.next` files are renamed over the old ones. Every write is atomic
(`hpa_cells.atomic_files`). Loading follows the manifest: each named file is taken under its own name, or under its
`.next` name when a save was stopped between the commit and the renames, and only when its sha256 matches. So a
kill before the commit resumes from the previous checkpoint and a kill after it from the new one; a set that
matches neither (a file replaced, cut or deleted from outside, weights of one save beside the state of another) is
refused with a one-line `CheckpointError` naming the folder.

Checkpoints written before the manifest existed (token, no manifest) and before the token (neither) still load;
for them a torn pair is detected by the token only.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpa_cells.atomic_files import atomic_output, write_json_atomic
from hpa_cells.file_hashes import sha256_of_file

if TYPE_CHECKING:
    import torch

__all__ = [
    "CHECKPOINT_MANIFEST",
    "CHECKPOINT_STATE",
    "CHECKPOINT_TENSORS",
    "CheckpointError",
    "checkpoint_exists",
    "load_checkpoint",
    "optimizer_tensors",
    "read_checkpoint_state",
    "restore_optimizer",
    "save_checkpoint",
]

CHECKPOINT_TENSORS = "checkpoint.safetensors"
CHECKPOINT_STATE = "checkpoint.json"
CHECKPOINT_MANIFEST = "checkpoint.manifest.json"
TOKEN_KEY = "checkpoint_token"
MANIFEST_FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be resumed from (missing half, torn pair, unreadable file)."""


def _next_name(name: str) -> str:
    """Where a save writes `name` before its commit: `checkpoint.next.json` for `checkpoint.json`."""
    stem, _, suffix = name.partition(".")
    return f"{stem}.next.{suffix}"



def checkpoint_exists(folder: str | Path) -> bool:
    """Whether `folder` holds a checkpoint to resume (a manifest, or the state file of an older checkpoint)."""
    folder = Path(folder)
    return (folder / CHECKPOINT_MANIFEST).is_file() or (folder / CHECKPOINT_STATE).is_file()


def save_checkpoint(folder: str | Path, tensors: Mapping[str, torch.Tensor], state: Mapping[str, Any]) -> Path:
    """Write `tensors` and the JSON-serialisable `state` into `folder` (see the module docstring for the order
    that keeps a resumable checkpoint on disk at every moment)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(8)
    contiguous = {name: value.detach().cpu().contiguous() for name, value in tensors.items()}
    staged = {CHECKPOINT_TENSORS: folder / _next_name(CHECKPOINT_TENSORS),
              CHECKPOINT_STATE: folder / _next_name(CHECKPOINT_STATE)}
    with atomic_output(staged[CHECKPOINT_TENSORS], fsync=True) as partial:
        save_file(contiguous, str(partial), metadata={TOKEN_KEY: token})
    with atomic_output(staged[CHECKPOINT_STATE], fsync=True) as partial:
        partial.write_text(json.dumps({**state, TOKEN_KEY: token}, indent=1) + "\n")
    manifest = {"format": MANIFEST_FORMAT, TOKEN_KEY: token,
                "files": {name: sha256_of_file(path) for name, path in staged.items()}}
    write_json_atomic(folder / CHECKPOINT_MANIFEST, manifest, indent=1)  # the commit
    for name, path in staged.items():
        os.replace(path, folder / name)
    return folder


def _read_manifest(folder: Path) -> dict[str, str] | None:
    """{file name: sha256} of the folder's manifest; None for a checkpoint written before manifests."""
    path = folder / CHECKPOINT_MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
        files = dict(manifest["files"])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"checkpoint {folder}: {CHECKPOINT_MANIFEST} is unreadable ({error}); delete the "
                              "folder to start over") from error
    if set(files) != {CHECKPOINT_TENSORS, CHECKPOINT_STATE}:
        raise CheckpointError(f"checkpoint {folder}: {CHECKPOINT_MANIFEST} names {sorted(files)}, not "
                              f"{CHECKPOINT_TENSORS} and {CHECKPOINT_STATE}; delete the folder to start over")
    return files


def _resolve_files(folder: Path, manifest: dict[str, str] | None) -> tuple[dict[str, Path], list[str]]:
    """(the path to read for each file, the names whose content does not match the manifest). Without a
    manifest: the plain names, nothing checked. CheckpointError when a file is missing."""
    if manifest is None:
        paths = {name: folder / name for name in (CHECKPOINT_TENSORS, CHECKPOINT_STATE)}
        missing = [name for name, path in paths.items() if not path.is_file()]
        if missing:
            raise CheckpointError(f"checkpoint {folder} is incomplete: {', '.join(missing)} missing")
        return paths, []
    paths, mismatched, missing = {}, [], []
    for name, sha in manifest.items():
        candidates = [p for p in (folder / name, folder / _next_name(name)) if p.is_file()]
        matching = [p for p in candidates if sha256_of_file(p) == sha]
        if matching:
            paths[name] = matching[0]
        elif candidates:
            paths[name] = candidates[0]
            mismatched.append(name)
        else:
            missing.append(name)
    if missing:
        raise CheckpointError(f"checkpoint {folder} is incomplete: {', '.join(missing)} missing")
    return paths, mismatched


def _read_state(path: Path) -> dict[str, Any]:
    try:
        state = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"checkpoint state {path} is unreadable: {error}") from error
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint state {path} is unreadable: not a JSON object")
    return state


def _tensor_token(path: Path, folder: Path) -> str | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return (handle.metadata() or {}).get(TOKEN_KEY)
    except Exception as error:  # safetensors raises its own error type (and OSError) for a cut file
        raise CheckpointError(f"checkpoint {folder}: {path.name} is unreadable ({error}); delete the folder to "
                              "start over") from error


def _mismatch(folder: Path, names: list[str]) -> CheckpointError:
    return CheckpointError(
        f"checkpoint {folder} is torn: {' and '.join(names)} {'do' if len(names) > 1 else 'does'} not match the sha256 in {CHECKPOINT_MANIFEST} "
        "(changed or cut after it was saved); delete the folder to start over")


def _verified(folder: Path) -> tuple[Path, dict[str, Any]]:
    """(the tensors file to read, the state without its token) of a checkpoint that passes every check: each file
    present and matching the manifest, the two files of one save (token)."""
    paths, mismatched = _resolve_files(folder, _read_manifest(folder))
    if CHECKPOINT_TENSORS in mismatched:
        raise _mismatch(folder, mismatched)
    state = _read_state(paths[CHECKPOINT_STATE])
    tensor_token = _tensor_token(paths[CHECKPOINT_TENSORS], folder)
    state_token = state.pop(TOKEN_KEY, None)
    if tensor_token != state_token and (tensor_token is not None or state_token is not None):
        raise CheckpointError(
            f"checkpoint {folder} is torn: {CHECKPOINT_TENSORS} and {CHECKPOINT_STATE} come from different "
            f"saves (tokens {tensor_token} and {state_token}); delete the folder to start over")
    if mismatched:
        raise _mismatch(folder, mismatched)
    return paths[CHECKPOINT_TENSORS], state


def read_checkpoint_state(folder: str | Path) -> dict[str, Any]:
    """The state saved by `save_checkpoint` (without its token), checked like `load_checkpoint` but without
    reading the tensors into memory: what a trainer compares its settings with before loading any weights."""
    return _verified(Path(folder))[1]


def load_checkpoint(folder: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and the state saved by `save_checkpoint` (the state without its token).

    Raises `CheckpointError` naming the folder when a file is missing, cut or changed, or the files come from two
    saves.
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    tensor_path, state = _verified(folder)
    try:
        return load_file(str(tensor_path)), state
    except Exception as error:  # safetensors' own error type for a damaged file
        raise CheckpointError(f"checkpoint {folder}: {tensor_path.name} is unreadable ({error}); delete the "
                              "folder to start over") from error


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
