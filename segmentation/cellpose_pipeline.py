"""The per-field CPU stages around the Cellpose network passes, as top-level functions of numpy arrays.

`CellposeSegmenter` runs each field in three stages:

1. `prepare_field`: the two network inputs (`segmentation.cellpose_segmenter.cellpose_input`: percentile
   normalisation, microtubule + ER mean), each rescaled to its network's object size (`scale_to_network`);
2. the network passes, batched over fields, on the segmenter's device (`CellposeNetRunner.run_scaled`);
3. `finish_field`: the flow dynamics that turn the nuclei network's flows into nucleus instances
   (`flows_to_mask`), the cells (grown from the nuclei, `segmentation.seeded_cells`, or Cellpose's own flow
   following), and the per-cell QC (`segmentation.result.build_result`).

Stages 1 and 3 take and return only numpy arrays and frozen dataclasses, so they can run in worker processes
(`concurrent.futures.ProcessPoolExecutor` with the spawn start method) while the network works on the next batch;
with no workers they run in the calling process. The functions are the same either way, so are the masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from hpa_cells.channels import ER, MICROTUBULE, NUCLEUS
from hpa_cells.normalisation import normalise_percentile
from segmentation.quality_control import QCConfig
from segmentation.result import SegmentationResult, build_result
from segmentation.seeded_cells import SeededCellSettings, grow_cells_from_nuclei

CELL_ASSEMBLIES = ("nuclei", "flows")
MIN_NETWORK_SIDE = 16
"""The smallest side (px) an input is rescaled to: CPnet downsamples four times."""


def normalize_percentile(channel: np.ndarray, low: float = 1.0, high: float = 99.0) -> np.ndarray:
    """Cellpose's `normalize99` convention: the `low`/`high` percentiles become 0 and 1, no clipping, float32.

    Cellpose's setting of `hpa_cells.normalisation.normalise_percentile`, used for training and inference alike,
    so the bundled models and Cellpose's built-ins see what they expect. A flat channel becomes zeros.
    """
    return normalise_percentile(channel, low, high, clip=False, min_range=1e-3, precision="float32")


def cellpose_input(image_chw: np.ndarray, kind: str, use_er: bool = True) -> np.ndarray:
    """The `2,H,W` float32 network input for one field.

    cells: channel 0 = microtubules (averaged with ER when `use_er`, which fills cells whose microtubules are
    faint), channel 1 = nucleus. nuclei: channel 0 = nucleus, channel 1 = zeros (Cellpose's nuclei convention).
    """
    if kind == "cells":
        cyto = image_chw[MICROTUBULE].astype(np.float32)
        if use_er:
            cyto = 0.5 * (cyto + image_chw[ER].astype(np.float32))
        return np.stack([normalize_percentile(cyto), normalize_percentile(image_chw[NUCLEUS])])
    if kind == "nuclei":
        nucleus = normalize_percentile(image_chw[NUCLEUS])
        return np.stack([nucleus, np.zeros_like(nucleus)])
    raise ValueError(f"kind must be 'cells' or 'nuclei', got {kind!r}")


def scale_to_network(x: np.ndarray, factor: float) -> np.ndarray:
    """A `2,H,W` input resized (bilinear, per channel) by `factor`, each side at least `MIN_NETWORK_SIDE` px."""
    h, w = x.shape[1:]
    sh, sw = max(MIN_NETWORK_SIDE, round(h * factor)), max(MIN_NETWORK_SIDE, round(w * factor))
    return np.stack([cv2.resize(c, (sw, sh), interpolation=cv2.INTER_LINEAR) for c in x])


@dataclass(frozen=True)
class MaskSettings:
    """How one network's outputs become instances (Cellpose's `compute_masks` arguments) at network scale."""

    niter: int
    cellprob_threshold: float
    flow_threshold: float
    min_size: int
    """Objects with fewer pixels (at network scale) are removed."""


def flows_to_mask(flows: np.ndarray, cellprob: np.ndarray, shape_hw: tuple[int, int],
                  settings: MaskSettings) -> np.ndarray:
    """Follow the flows (`2,h,w`) at network scale on the CPU, then resize the label mask to `shape_hw`
    (nearest); `H,W` int32."""
    import torch
    from cellpose.dynamics import compute_masks
    from cellpose.utils import fill_holes_and_remove_small_masks

    masks = compute_masks(
        flows, cellprob, niter=settings.niter, cellprob_threshold=settings.cellprob_threshold,
        flow_threshold=settings.flow_threshold, device=torch.device("cpu"),
    )
    masks = fill_holes_and_remove_small_masks(masks, min_size=settings.min_size)
    h, w = shape_hw
    return cv2.resize(masks.astype(np.uint16), (w, h), interpolation=cv2.INTER_NEAREST).astype(np.int32)


def evidence_from_outputs(flows: np.ndarray, cellprob: np.ndarray, shape_hw: tuple[int, int],
                          ) -> tuple[np.ndarray, np.ndarray]:
    """The cell-probability logits and the divergence of the flows, each resized to `shape_hw` (bilinear).

    Flows point from a cell's edge to its centre, so their divergence is positive on the borders between cells
    and negative at the centres; it is divided by its 99th percentile of magnitude, so about 1 on clear borders
    whatever the flows' scale."""
    divergence = np.gradient(flows[0], axis=0) + np.gradient(flows[1], axis=1)
    divergence = divergence / (float(np.percentile(np.abs(divergence), 99)) + 1e-6)
    size = (shape_hw[1], shape_hw[0])
    return (cv2.resize(cellprob, size, interpolation=cv2.INTER_LINEAR),
            cv2.resize(divergence.astype(np.float32), size, interpolation=cv2.INTER_LINEAR))


@dataclass(frozen=True)
class NetworkOutput:
    """One field's outputs of one network at network scale: flows `2,h,w` and cell-probability logits `h,w`."""

    flows: np.ndarray
    cellprob: np.ndarray


@dataclass(frozen=True)
class FieldStages:
    """Everything the CPU stages of one field need (picklable: sent to worker processes with each field)."""

    use_er: bool
    nucleus_rescale: float
    cell_rescale: float
    nucleus_masks: MaskSettings
    cell_masks: MaskSettings
    cell_assembly: str
    seeded: SeededCellSettings
    qc: QCConfig

    def __post_init__(self) -> None:
        if self.cell_assembly not in CELL_ASSEMBLIES:
            raise ValueError(f"cell_assembly must be one of {', '.join(CELL_ASSEMBLIES)}, got {self.cell_assembly!r}")


def prepare_field(image_chw: np.ndarray, stages: FieldStages) -> tuple[np.ndarray, np.ndarray]:
    """(nuclei network input, cell network input) of a `4,H,W` field, each `2,h,w` float32 at its network's
    scale."""
    nuclei = scale_to_network(cellpose_input(image_chw, "nuclei"), stages.nucleus_rescale)
    cells = scale_to_network(cellpose_input(image_chw, "cells", stages.use_er), stages.cell_rescale)
    return nuclei, cells


def finish_field(image_chw: np.ndarray, nuclei: NetworkOutput | np.ndarray, cells: NetworkOutput | np.ndarray,
                 stages: FieldStages) -> SegmentationResult:
    """The segmentation of a `4,H,W` field from its networks' outputs (or from instance masks `H,W` already made,
    e.g. by a diameter-refining pass): nucleus instances by flow dynamics, cells by `stages.cell_assembly`, QC."""
    shape = image_chw.shape[1:]
    for name, given in (("nucleus", nuclei), ("cell", cells)):
        if isinstance(given, np.ndarray) and given.shape != shape:
            raise ValueError(f"the {name} mask {given.shape} must match the field's {shape}")
    if isinstance(nuclei, NetworkOutput):
        nuclei = flows_to_mask(nuclei.flows, nuclei.cellprob, shape, stages.nucleus_masks)
    if isinstance(cells, np.ndarray):
        cell_mask = cells
    elif stages.cell_assembly == "nuclei":
        logits, divergence = evidence_from_outputs(cells.flows, cells.cellprob, shape)
        cell_mask = grow_cells_from_nuclei(image_chw, nuclei, logits, stages.seeded, divergence)
    else:
        cell_mask = flows_to_mask(cells.flows, cells.cellprob, shape, stages.cell_masks)
    return build_result(cell_mask, nuclei, stages.qc)


def warm_worker() -> int:
    """Load the flow dynamics in a worker process (Cellpose compiles its numba functions at import, seconds), so the
    first fields do not wait for it; the process id."""
    import os

    import cellpose.dynamics  # noqa: F401
    import cellpose.utils  # noqa: F401

    return os.getpid()


def quiet_worker() -> None:
    """Initializer of post-processing worker processes: one thread each for torch and OpenCV (the workers are
    the parallelism; each library's own thread pool would oversubscribe the cores)."""
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
