"""Finding and loading Cellpose CPnet weights: Cellpose's built-ins, a custom file, or the bundled model.

A model is chosen by a name or a path:

* ``"bundled"`` (the default): the project's own small CPnet models, trained offline by
  ``scripts/train_segmenter.py`` and committed as ``segmentation/models/hpa_cells_{cells,nuclei}``
  (``.safetensors`` weights + ``.json`` settings; see ``segmentation/models/MODEL_CARD.md``).
* ``"cyto3"``, ``"cyto2"``, ``"cyto"``, ``"nuclei"``: Cellpose 3's built-in models, used when their files are in
  Cellpose's model folder (``$CELLPOSE_LOCAL_MODELS_PATH``, else ``~/.cellpose/models``). Nothing is downloaded:
  a missing file raises `ModelNotFoundError` saying where it looked and how to get the file.
* a path: a ``.safetensors`` file with a ``.json`` beside it (the bundled format), or a Cellpose 3 model file
  (a torch state dict as written by ``CPnet.save_model`` / Cellpose training), loaded with ``weights_only=True``.

The network widths (``nbase``) are read from the weights themselves, so narrow custom models load without
knowing how they were built (Cellpose's own ``CellposeModel`` always builds the full-width network).
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch

from hpa_cells.atomic_files import atomic_output, write_json_atomic
from hpa_cells.file_hashes import sha256_of_file  # also imported from here by the segmentation trainer

logger = logging.getLogger(__name__)

ModelKind = Literal["cells", "nuclei"]

BUNDLED_MODEL_DIR = Path(__file__).resolve().parent / "models"
BUNDLED_MODEL_NAMES: dict[str, str] = {"cells": "hpa_cells_cells", "nuclei": "hpa_cells_nuclei"}

# Cellpose 3 built-in model names -> their file names in Cellpose's model folder, and their training diameter.
BUILTIN_MODEL_FILES: dict[str, str] = {
    "cyto3": "cyto3",
    "cyto2": "cyto2torch_0",
    "cyto": "cytotorch_0",
    "nuclei": "nucleitorch_0",
}
BUILTIN_DIAM_MEAN: dict[str, float] = {"cyto3": 30.0, "cyto2": 30.0, "cyto": 30.0, "nuclei": 17.0}


class ModelNotFoundError(FileNotFoundError):
    """A segmentation model that is not on this machine; the message says where it was looked for."""


class ModelFormatError(ValueError):
    """A model file that exists but cannot be read as a Cellpose 3 CPnet."""


def cellpose_model_dir() -> Path:
    """Cellpose's model folder, read from the environment at call time (as Cellpose itself does at import)."""
    env = os.environ.get("CELLPOSE_LOCAL_MODELS_PATH")
    return Path(env) if env else Path.home() / ".cellpose" / "models"


@dataclass(frozen=True)
class CellposeNetSpec:
    """Everything needed to rebuild and run one CPnet: where its weights are and how it was trained.

    `diam_mean` is the object diameter (pixels) that the network was trained at: inputs are rescaled so
    objects have this size before the network sees them.
    """

    name: str
    path: Path
    file_format: Literal["safetensors", "cellpose-torch"]
    nbase: tuple[int, ...]
    diam_mean: float
    sha256: str
    settings: dict = field(default_factory=dict)

    def provenance(self) -> dict:
        record = asdict(self)
        record["path"] = str(self.path)
        return record



def resolve_model(name_or_path: str | os.PathLike[str], kind: ModelKind) -> CellposeNetSpec:
    """Turn a model name or path into a `CellposeNetSpec`, without building the network.

    Raises `ModelNotFoundError` with every place that was searched when the weights are not on disk.
    """
    text = os.fspath(name_or_path)
    if text == "bundled":
        base = BUNDLED_MODEL_DIR / BUNDLED_MODEL_NAMES[kind]
        weights = base.with_suffix(".safetensors")
        if not weights.is_file():
            raise ModelNotFoundError(
                f"the bundled {kind} model is missing: looked for {weights}. It is committed with the project; "
                f"restore it with `git checkout -- {weights.relative_to(BUNDLED_MODEL_DIR.parent.parent)}` "
                f"or retrain it with `python scripts/train_segmenter.py --kind {kind}`"
            )
        return _spec_from_safetensors(weights, name=f"bundled:{BUNDLED_MODEL_NAMES[kind]}")
    if text in BUILTIN_MODEL_FILES:
        folder = cellpose_model_dir()
        weights = folder / BUILTIN_MODEL_FILES[text]
        if not weights.is_file():
            raise ModelNotFoundError(
                f"Cellpose built-in model {text!r} not found: looked for {weights} (Cellpose's model folder, "
                f"set by $CELLPOSE_LOCAL_MODELS_PATH). This machine downloads nothing: on a machine with internet "
                f"run `python -c \"from cellpose import models; models.CellposeModel(model_type='{text}')\"`, "
                f"then copy {BUILTIN_MODEL_FILES[text]} from its ~/.cellpose/models into {folder}; or use the "
                f"project's offline default, --model bundled"
            )
        return _spec_from_torch_file(weights, name=text, diam_mean_override=BUILTIN_DIAM_MEAN[text])
    path = Path(text).expanduser()
    if not path.is_file():
        raise ModelNotFoundError(
            f"model {text!r} not found: it is not a file, not 'bundled', and not one of Cellpose's built-in "
            f"names ({', '.join(sorted(BUILTIN_MODEL_FILES))})"
        )
    if path.suffix == ".safetensors":
        return _spec_from_safetensors(path, name=path.stem)
    return _spec_from_torch_file(path, name=path.name, diam_mean_override=None)


def _nbase_from_state_dict(state: dict[str, torch.Tensor], path: Path) -> tuple[int, ...]:
    widths: list[int] = []
    level = 0
    while f"downsample.down.res_down_{level}.proj.1.weight" in state:
        weight = state[f"downsample.down.res_down_{level}.proj.1.weight"]
        if level == 0:
            widths.append(int(weight.shape[1]))
        widths.append(int(weight.shape[0]))
        level += 1
    if level == 0 or "output.2.weight" not in state:
        raise ModelFormatError(
            f"{path} is not a Cellpose 3 CPnet state dict (no 'downsample.down.res_down_0.proj.1.weight' / "
            f"'output.2.weight'); Cellpose 4 (Cellpose-SAM) and transformer models are not supported"
        )
    return tuple(widths)


def _one_line(err: Exception) -> str:
    """torch.load's error in one line; for a refused pickle only its reason (torch's text suggests
    `weights_only=False`, which this project never does)."""
    text = str(err)
    refused = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    if refused:
        return f"not a plain tensor state dict ({refused.group(1).strip()}); arbitrary pickles are never loaded"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0] if lines else 'no details'}"


def _spec_from_torch_file(path: Path, name: str, diam_mean_override: float | None) -> CellposeNetSpec:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several unrelated types for a bad file
        raise ModelFormatError(f"{path} could not be read as a Cellpose model file: {_one_line(err)}") from err
    if not isinstance(state, dict):
        raise ModelFormatError(f"{path} holds a {type(state).__name__}, not a Cellpose state dict")
    nbase = _nbase_from_state_dict(state, path)
    diam = diam_mean_override if diam_mean_override is not None else float(state["diam_mean"].reshape(-1)[0])
    return CellposeNetSpec(name, path, "cellpose-torch", nbase, diam, sha256_of_file(path))


def _spec_from_safetensors(path: Path, name: str) -> CellposeNetSpec:
    settings_path = path.with_suffix(".json")
    if not settings_path.is_file():
        raise ModelNotFoundError(f"{path} has no settings file beside it: looked for {settings_path}")
    try:
        settings = json.loads(settings_path.read_text())
        nbase = tuple(int(x) for x in settings["nbase"])
        diam_mean = float(settings["diam_mean"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ModelFormatError(f"{settings_path}: invalid model settings ({err}); needs 'nbase' and 'diam_mean'") from err
    return CellposeNetSpec(name, path, "safetensors", nbase, diam_mean, sha256_of_file(path), settings)


def build_network(spec: CellposeNetSpec, device: torch.device | str = "cpu") -> torch.nn.Module:
    """Build the CPnet described by `spec`, load its weights, and put it in eval mode on `device`."""
    from cellpose.resnet_torch import CPnet

    net = CPnet(list(spec.nbase), 3, sz=3, mkldnn=False, max_pool=True, diam_mean=spec.diam_mean)
    if spec.file_format == "safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(spec.path), device="cpu")
        except Exception as err:  # safetensors raises its own SafetensorError, OSError, ...
            raise ModelFormatError(f"{spec.path} could not be read as safetensors weights: {err}") from err
    else:
        state = torch.load(spec.path, map_location="cpu", weights_only=True)
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches raise even with strict=False
        raise ModelFormatError(
            f"{spec.path}: weights do not fit a CPnet with widths {list(spec.nbase)} ({str(err).splitlines()[0]})"
        ) from err
    missing = [k for k in missing if k not in ("diam_mean", "diam_labels")]
    if missing or unexpected:
        raise ModelFormatError(
            f"{spec.path}: weights do not fit a CPnet with widths {list(spec.nbase)} "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    net.diam_mean.data[:] = spec.diam_mean
    return net.to(device).eval()


def save_bundled_format(net: torch.nn.Module, path: Path, settings: dict, float16: bool = False) -> Path:
    """Save a CPnet as `path` (.safetensors) + `path.with_suffix('.json')`: pickle-free, loadable by `resolve_model`.

    `float16` halves the file (the committed bundled models use it); loading casts back to float32.
    """
    from safetensors.torch import save_file

    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: bundled-format weights must end in .safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    if float16:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        settings = {**settings, "weights_dtype": "float16"}
    with atomic_output(path) as partial:
        save_file(state, str(partial))
    record = {"nbase": list(net.nbase), "diam_mean": float(net.diam_mean.item()), **settings}
    write_json_atomic(path.with_suffix(".json"), record, indent=2, sort_keys=True)
    return path


def convert_to_float16(path: Path) -> Path:
    """Rewrite a bundled-format model in place with float16 weights (the settings file keeps its record)."""
    spec = resolve_model(path, "cells")
    settings = {k: v for k, v in spec.settings.items() if k not in ("nbase", "diam_mean")}
    return save_bundled_format(build_network(spec), path, settings, float16=True)
