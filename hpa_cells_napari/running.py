"""Running hpa-cells from napari without Qt: fields (a folder, or four channel arrays written as one field) ->
segmentation -> a model -> a prediction folder, through the commands' own library path: `hpa_cells_cli.segment.main`
then `hpa_cells_cli.predict.main`, exactly as `segment.py --images DIR --out OUT/cells.h5` followed by
`predict.py --cache OUT/cells.h5 --out OUT` (with segment.py's default segmenter that is what
`predict.py --images DIR --out OUT` runs). So the GUI and the command line write the same files.

`run_prediction` is a generator of progress steps (for napari's worker thread); a failing step raises `RunError`
with the command's own error line."""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpa_cells.channels import CHANNELS
from hpa_cells.images import write_sample

IMAGES_CACHE_NAME = "cells.h5"
"""The cache is kept in OUT/cells.h5, as `predict.py --images` keeps it (a rerun resumes)."""
FIELDS_FOLDER = "fields"
"""Open image layers are written as one field into OUT/fields/ before segmenting."""
STEPS = 3


class RunError(RuntimeError):
    """A step failed; the message is the command's own error line."""


@dataclass(frozen=True)
class Progress:
    """One step of a run: `step` of `total`, and what it is doing."""

    step: int
    total: int
    message: str


def field_id_of(name: str) -> str:
    """A field id made from a layer name: letters, digits, '-' and '_' kept, anything else '-'."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-") or "field"


def to_uint8(plane: np.ndarray) -> np.ndarray:
    """A channel as uint8: uint8 kept; other integers by their dtype's full range (as segment.py reads 16-bit
    files); floats in [0, 1] times 255, other floats by their own maximum."""
    plane = np.asarray(plane)
    if plane.dtype == np.uint8:
        return plane
    if np.issubdtype(plane.dtype, np.integer):
        top = float(np.iinfo(plane.dtype).max)
        return np.clip(np.rint(plane.astype(np.float64) / top * 255), 0, 255).astype(np.uint8)
    values = plane.astype(np.float64)
    top = 1.0 if values.size == 0 or float(values.max()) <= 1.0 else float(values.max())
    return np.clip(np.rint(values / top * 255), 0, 255).astype(np.uint8)


def write_field(channels: Mapping[str, np.ndarray], out: Path, field_id: str) -> Path:
    """Write four channel arrays (channel -> `H,W`) as the field `field_id` in OUT/fields/; the folder."""
    missing = [c for c in CHANNELS if c not in channels]
    if missing:
        raise RunError(f"choose an image layer for every channel: {', '.join(missing)} missing")
    shapes = {c: np.asarray(channels[c]).shape for c in CHANNELS}
    if len(set(shapes.values())) != 1 or len(shapes["red"]) != 2:
        raise RunError(f"the four channel layers must be 2-D and the same size, got {shapes}")
    folder = Path(out) / FIELDS_FOLDER
    image = np.stack([to_uint8(channels[c]) for c in CHANNELS])
    write_sample(folder, field_id, image)
    return folder


def _call(command_main, argv: list[str], name: str) -> str:
    """Run a command's `main(argv)`, its output captured; the output, or RunError with its error line."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        code = command_main(argv, prog=name)
    text = buffer.getvalue()
    if code != 0:
        errors = [line for line in text.splitlines() if line.startswith("error:")]
        raise RunError(f"{name} failed: {errors[-1] if errors else text.strip()[-300:]}")
    return text


def run_prediction(images_dir: Path, out: Path, model: str | Path | None = None, segmenter: str = "cellpose",
                   device: str = "cpu") -> Iterator[Progress]:
    """Segment the fields of `images_dir` into OUT/cells.h5 and predict them into OUT (see the module
    docstring); `model` None or 'bundled' = the bundled model. Yields a `Progress` before each step."""
    from hpa_cells_cli import predict, segment

    out = Path(out)
    cache = out / IMAGES_CACHE_NAME
    yield Progress(1, STEPS, f"segmenting {images_dir} ({segmenter})")
    out.mkdir(parents=True, exist_ok=True)
    _call(segment.main, ["--images", str(images_dir), "--out", str(cache), "--segmenter", segmenter,
                         "--device", device], "segment.py")
    if not cache.is_file():
        raise RunError(f"no fields to predict in {images_dir}: no complete {{id}}_{{red,green,blue,yellow}} files")
    yield Progress(2, STEPS, f"predicting with {model or 'the bundled model'}")
    _call(predict.main, ["--cache", str(cache), "--out", str(out), "--model", str(model or predict.BUNDLED),
                         "--device", device], "predict.py")
    yield Progress(3, STEPS, f"done: {out}")
