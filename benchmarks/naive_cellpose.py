"""The naive baseline of the segmentation benchmarks: Cellpose's own `CellposeModel.eval`, once per image, at its
default settings (tiles, dynamics at full resolution, flow threshold 0.4), carrying the same weights as the
project's fast path. Shared by bench_segmentation.py and rescore_segmentation_loo.py."""

from __future__ import annotations

import numpy as np


def naive_cellpose_model(spec):
    """Cellpose's own `CellposeModel` carrying the weights of `spec` (a `segmentation.cellpose_models` spec)."""
    from cellpose import models

    from segmentation.cellpose_models import build_network

    model = models.CellposeModel(gpu=False, pretrained_model=False)
    model.net = build_network(spec, "cpu")
    model.diam_mean = model.diam_labels = spec.diam_mean
    model.nbase = list(spec.nbase)
    return model


def naive_eval(model, image_chw: np.ndarray, kind: str, diameter: float, use_er: bool = True) -> np.ndarray:
    """`model.eval` at Cellpose's default settings on one `4,H,W` field; `H,W` int32 labels. Cells: cyto = the
    microtubules (averaged with ER when `use_er`), nucleus as the second channel; nuclei: the nucleus channel."""
    if kind == "cells":
        cyto = image_chw[0].astype(np.float32)
        if use_er:
            cyto = 0.5 * (cyto + image_chw[3].astype(np.float32))
        rgb = np.stack([cyto, image_chw[2].astype(np.float32), np.zeros_like(cyto)], axis=-1)
        masks = model.eval(rgb, channels=[1, 2], diameter=diameter)[0]
    else:
        masks = model.eval(image_chw[2], channels=[0, 0], diameter=diameter)[0]
    return masks.astype(np.int32)
