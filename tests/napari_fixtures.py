"""Shared set-up of the napari plugin tests: a virtual X display for napari's OpenGL canvas (Xvfb, started when no
display is set; Qt's xcb platform on it, since Qt's `offscreen` platform draws the GL canvas black), else Qt offscreen,
a tiny model, and prediction folders made by the command line (`segment.py` + `predict.py`)."""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from mil_fixtures import random_bags, write_bag_cache

CROP_SIZE = 128
"""segment.py's default --crop-size (predict.py refuses a cache of another crop size than the model's)."""


def _end_with_parent() -> None:
    """In the Xvfb child: receive SIGTERM when the test process ends (Linux prctl PR_SET_PDEATHSIG)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)


def start_xvfb() -> subprocess.Popen | None:
    """Start Xvfb on a free display and set DISPLAY and QT_QPA_PLATFORM=xcb (windows go to that invisible screen);
    None when DISPLAY is already set or Xvfb is not installed.

    Xvfb must outlive the QApplication connected to it: killed first, Xlib's I/O error handler would end the test
    process with exit status 1 at interpreter shutdown, after every test passed. So it is never killed by the tests;
    it ends with the test process (PR_SET_PDEATHSIG)."""
    if os.environ.get("DISPLAY") or shutil.which("Xvfb") is None:
        return None
    read_fd, write_fd = os.pipe()
    process = subprocess.Popen(["Xvfb", "-displayfd", str(write_fd), "-screen", "0", "1280x1024x24", "-nolisten",
                                "tcp"], pass_fds=(write_fd,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               preexec_fn=_end_with_parent)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        display = pipe.readline().strip()
    if not display:
        process.kill()
        return None
    os.environ["DISPLAY"] = f":{display}"
    os.environ["QT_QPA_PLATFORM"] = "xcb"
    time.sleep(0.2)
    return process


def train_tiny_model(root: Path) -> Path:
    """A complete model folder trained in seconds on hand-made bags of segment.py's default crop size."""
    from mil.config import MILConfig
    from mil.training import TrainConfig, train_mil

    cache = write_bag_cache(root / "bags.h5", random_bags(8, seed=3, crop_size=CROP_SIZE))
    model = root / "model"
    train_mil(cache, model, MILConfig(encoder="test_resnet", input_size=16, dropout=0.0),
              TrainConfig(epochs=1, batch_size=4, max_cells=4, val_fraction=0.25, device="cpu"))
    (model / "MODEL_CARD.md").write_text("# tiny test model (random hand-made bags: its calls mean nothing)\n")
    return model


def predict_with_cli(images: Path, out: Path, model: Path, segmenter: str = "watershed") -> Path:
    """`segment.py --segmenter SEGMENTER` then `predict.py --cache`: the command line's prediction folder."""
    from hpa_cells_cli import predict, segment

    cache = out / "cells.h5"
    out.mkdir(parents=True, exist_ok=True)
    assert segment.main(["--images", str(images), "--out", str(cache), "--segmenter", segmenter]) == 0
    assert predict.main(["--cache", str(cache), "--out", str(out), "--model", str(model)]) == 0
    return out
