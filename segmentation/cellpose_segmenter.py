"""Cell and nucleus segmentation of HPA fields with Cellpose 3 CPnet models, batched for speed.

Cells are segmented from the microtubule channel (optionally combined with ER) with the nucleus channel as
Cellpose's second channel; nuclei from the nucleus channel alone. Unlike a loop over
``CellposeModel.eval`` (which tiles every image into overlapping 224 px patches, and by default resizes the
flows back and runs the flow dynamics at full resolution), this segmenter

1. rescales every image once so that objects have the network's training diameter (``diam_mean``),
2. stacks all images of a batch into one tensor and runs the network **once per batch** (whole images inside
   Cellpose's 8 px zero margin; the network is fully convolutional, so no tiles; images of another shape get
   their own pass),
3. follows the flows at the network's resolution and resizes only the final label masks back (nearest),

which is several times faster on a CPU at the same accuracy (see BENCHMARKS.md).

How cells are made from the cell network's outputs is `CellposeSettings.cell_assembly`:
- "nuclei" (the default): each cell is grown from one nucleus of the nuclei network over the pixels the cell
  network calls cell (`segmentation.seeded_cells`), the convention of HPA's own segmentation; the cell network
  runs once, without flow dynamics. Closer to the real reference masks on held-out fields, and faster.
- "flows": Cellpose's own flow following (`CellposeNetRunner.segment`); cells need not contain a nucleus.

Diameters are in pixels of the image as given (the working size, 512 px by default). The defaults were
measured on the real HPA fields with reference masks in ../shared/data: cells at 512 px have a median
equivalent diameter of about 80 px (61-111 px across fields), nuclei about 40 px. Other working sizes scale
them linearly (`default_diameters`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import cv2
import numpy as np
import torch

from hpa_cells.channels import ER, MICROTUBULE, NUCLEUS
from hpa_cells.normalisation import normalise_percentile
from segmentation.cellpose_models import CellposeNetSpec, build_network, resolve_model
from segmentation.preprocessing import check_field_image
from segmentation.quality_control import QCConfig
from segmentation.result import SegmentationResult, build_result
from segmentation.seeded_cells import SeededCellSettings, grow_cells_from_nuclei

logger = logging.getLogger(__name__)

REFERENCE_WORKING_SIZE = 512
CELL_DIAMETER_AT_512 = 80.0
NUCLEUS_DIAMETER_AT_512 = 40.0
EDGE_MARGIN = 8
"""Zeros (px at network scale) around every network input, as Cellpose's `run_net` pads."""
CELL_ASSEMBLIES = ("nuclei", "flows")
SIZE_ESTIMATE_SCALE = 2 / 3
"""Object size (fraction of the network's `diam_mean`) in the cheap pass that measures diameters for refinement:
within about 10% of the full-scale measurement on the synthetic and real fields, at under half the cost."""


def default_diameters(working_size: int) -> tuple[float, float]:
    """(cell, nucleus) diameters in pixels for images whose longer side is `working_size`."""
    scale = working_size / REFERENCE_WORKING_SIZE
    return CELL_DIAMETER_AT_512 * scale, NUCLEUS_DIAMETER_AT_512 * scale


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


@dataclass(frozen=True)
class FlowSettings:
    """How network outputs become masks (Cellpose's `compute_masks` arguments, with Cellpose's defaults)."""

    flow_threshold: float = 0.4
    cellprob_threshold: float = 0.0
    niter: int = 200
    min_size_fraction: float = 0.05
    """Objects smaller than this fraction of the expected object area (at network scale) are removed."""


class CellposeNetRunner:
    """One CPnet plus the rescaling around it: `2,H,W` inputs in, instance label masks out."""

    def __init__(self, spec: CellposeNetSpec, diameter: float, device: str | torch.device = "cpu",
                 flow: FlowSettings | None = None, net: torch.nn.Module | None = None) -> None:
        if diameter <= 0:
            raise ValueError(f"diameter must be positive, got {diameter}")
        self.spec = spec
        self.diameter = float(diameter)
        self.device = torch.device(device)
        self.flow = flow or FlowSettings()
        if net is None:  # channels-last weights: faster CPU convolutions (oneDNN); a caller's network is left as is
            net = build_network(spec, self.device).to(memory_format=torch.channels_last)
        self.net = net

    @classmethod
    def from_network(cls, net: torch.nn.Module, spec: CellposeNetSpec, diameter: float) -> CellposeNetRunner:
        """Wrap a network already in memory (e.g. one in training) without reloading weights."""
        return cls(spec, diameter, next(net.parameters()).device, net=net)

    @property
    def rescale(self) -> float:
        """Factor applied to inputs so objects of `diameter` px become `diam_mean` px."""
        return self.spec.diam_mean / self.diameter

    def network_outputs(self, inputs: Sequence[np.ndarray], rescale: float | None = None,
                        ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Run the network once over a batch of `2,H,W` inputs; returns (flows `2,h,w`, cellprob `h,w`) per
        input at network scale. `rescale` overrides the runner's own (`diam_mean / diameter`).

        Each rescaled input is surrounded by zeros as in Cellpose's own `run_net` (`transforms.get_pad_yx`: the
        size is rounded up to a multiple of 16 plus 8 px on every side, the input centred), and inputs of
        different shapes share the largest such canvas. Without that margin the network's outputs at the image
        edge differ from Cellpose's, and the flow-error check then discards many whole cells (BENCHMARKS.md).
        """
        factor = self.rescale if rescale is None else rescale
        scaled = []
        for x in inputs:
            h, w = x.shape[1:]
            sh, sw = max(16, round(h * factor)), max(16, round(w * factor))
            scaled.append(np.stack([cv2.resize(c, (sw, sh), interpolation=cv2.INTER_LINEAR) for c in x]))
        # Cellpose's get_pad_yx: round up to a multiple of 16, split the rest around the image, add the margin.
        offsets = [(EDGE_MARGIN + (-s.shape[1] % 16) // 2, EDGE_MARGIN + (-s.shape[2] % 16) // 2) for s in scaled]
        ph = max(s.shape[1] + (-s.shape[1] % 16) for s in scaled) + 2 * EDGE_MARGIN
        pw = max(s.shape[2] + (-s.shape[2] % 16) for s in scaled) + 2 * EDGE_MARGIN
        batch = np.zeros((len(scaled), 2, ph, pw), np.float32)
        for i, ((oy, ox), s) in enumerate(zip(offsets, scaled, strict=True)):
            batch[i, :, oy:oy + s.shape[1], ox:ox + s.shape[2]] = s
        with torch.inference_mode():
            tensor = torch.from_numpy(batch).to(self.device).contiguous(memory_format=torch.channels_last)
            out = self.net(tensor)[0].float().cpu().contiguous().numpy()
        return [(out[i, :2, oy:oy + s.shape[1], ox:ox + s.shape[2]], out[i, 2, oy:oy + s.shape[1], ox:ox + s.shape[2]])
                for i, ((oy, ox), s) in enumerate(zip(offsets, scaled, strict=True))]

    def cell_evidence(self, inputs: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """For a batch of `2,H,W` inputs (one network pass): the cell-probability logits and the divergence of
        the predicted flows, each resized to its input's `H,W` (bilinear). Flows point from a cell's edge to its
        centre, so their divergence is positive on the borders between cells and negative at the centres; it is
        divided by its 99th percentile of magnitude, so about 1 on clear borders whatever the flows' scale."""
        evidence = []
        for (flows, prob), x in zip(self.network_outputs(inputs), inputs, strict=True):
            divergence = np.gradient(flows[0], axis=0) + np.gradient(flows[1], axis=1)
            divergence = divergence / (float(np.percentile(np.abs(divergence), 99)) + 1e-6)
            size = (x.shape[2], x.shape[1])
            evidence.append((cv2.resize(prob, size, interpolation=cv2.INTER_LINEAR),
                             cv2.resize(divergence.astype(np.float32), size, interpolation=cv2.INTER_LINEAR)))
        return evidence

    def masks_from_outputs(self, flows: np.ndarray, cellprob: np.ndarray, shape_hw: tuple[int, int]) -> np.ndarray:
        """Follow the flows at network scale, then resize the label mask to `shape_hw` (nearest)."""
        from cellpose.dynamics import compute_masks
        from cellpose.utils import fill_holes_and_remove_small_masks

        masks = compute_masks(
            flows, cellprob, niter=self.flow.niter, cellprob_threshold=self.flow.cellprob_threshold,
            flow_threshold=self.flow.flow_threshold, device=torch.device("cpu"),
        )
        min_size = int(self.flow.min_size_fraction * np.pi * (self.spec.diam_mean / 2) ** 2)
        masks = fill_holes_and_remove_small_masks(masks, min_size=min_size)
        h, w = shape_hw
        return cv2.resize(masks.astype(np.uint16), (w, h), interpolation=cv2.INTER_NEAREST).astype(np.int32)

    def segment(self, inputs: Sequence[np.ndarray], refine_tolerance: float | None = None) -> list[np.ndarray]:
        """Instance masks (`H,W` int32) for a batch of `2,H,W` inputs.

        With `refine_tolerance` (e.g. 1.25), the diameter is set from the data: a cheaper first pass, with objects
        shown at `SIZE_ESTIMATE_SCALE` of the network's size, measures the median equivalent diameter of each
        image's objects; an image whose objects are more than that factor larger or smaller than `diameter` is
        then segmented at its measured diameter (clipped to 0.5-2x), the others at `diameter` in one batched
        pass. This is what Cellpose's size model is for, without needing one.
        """
        if refine_tolerance is None:
            outputs = self.network_outputs(inputs)
            return [self.masks_from_outputs(f, p, x.shape[1:]) for (f, p), x in zip(outputs, inputs, strict=True)]
        from cellpose.utils import diameters

        coarse = self.network_outputs(inputs, rescale=self.rescale * SIZE_ESTIMATE_SCALE)
        at_default: list[int] = []
        refined: dict[int, float] = {}
        for i, ((flows, prob), x) in enumerate(zip(coarse, inputs, strict=True)):
            mask = self.masks_from_outputs(flows, prob, x.shape[1:])
            measured = float(diameters(mask)[0]) if mask.max() >= 3 else self.diameter  # too few objects: keep
            if 1 / refine_tolerance <= measured / self.diameter <= refine_tolerance:
                at_default.append(i)
            else:
                refined[i] = float(np.clip(measured, 0.5 * self.diameter, 2.0 * self.diameter))
                logger.debug("input %d: objects measure %.1f px, not %.1f", i, measured, self.diameter)
        masks: list[np.ndarray | None] = [None] * len(inputs)
        if at_default:
            outputs = self.network_outputs([inputs[i] for i in at_default])
            for i, (flows, prob) in zip(at_default, outputs, strict=True):
                masks[i] = self.masks_from_outputs(flows, prob, inputs[i].shape[1:])
        for i, diameter in refined.items():
            (flows, prob), = self.network_outputs([inputs[i]], rescale=self.spec.diam_mean / diameter)
            masks[i] = self.masks_from_outputs(flows, prob, inputs[i].shape[1:])
        return [m for m in masks if m is not None]


@dataclass(frozen=True)
class CellposeSettings:
    """User-facing settings of `CellposeSegmenter` (saved as provenance with the cached cells)."""

    cell_model: str = "bundled"
    nucleus_model: str = "bundled"
    cell_diameter: float | None = None
    nucleus_diameter: float | None = None
    diameter_tolerance: float | None = None
    """Segment an image at its own measured object diameter when that is more than this factor off the assumed
    one (`CellposeNetRunner.segment`; None, the default: always at the assumed diameter, one pass). With the
    "nuclei" assembly it applies to the nuclei only (the cell network runs once); there it did not help on the
    held-out real fields (in the densest one it measured merged nuclei and merged more). With "flows", 1.25 gained
    about 0.02 AP@0.5 at twice the time (BENCHMARKS.md)."""
    use_er: bool = True
    device: str = "cpu"
    cell_assembly: str = "nuclei"
    """"nuclei": grow one cell from each nucleus over the cell network's foreground (`segmentation.seeded_cells`);
    "flows": Cellpose's flow following. See the module docstring."""

    def __post_init__(self) -> None:
        if self.cell_assembly not in CELL_ASSEMBLIES:
            raise ValueError(f"cell_assembly must be one of {', '.join(CELL_ASSEMBLIES)}, got {self.cell_assembly!r}")


class CellposeSegmenter:
    """Segments cells and nuclei of HPA fields with two Cellpose networks; see the module docstring."""

    name = "cellpose"

    def __init__(self, settings: CellposeSettings | None = None, qc: QCConfig | None = None,
                 flow: FlowSettings | None = None, seeded: SeededCellSettings | None = None) -> None:
        self.settings = settings or CellposeSettings()
        self.qc = qc or QCConfig()
        self.flow = flow or FlowSettings()
        self.seeded = seeded or SeededCellSettings()
        self._cell_spec = resolve_model(self.settings.cell_model, "cells")
        self._nucleus_spec = resolve_model(self.settings.nucleus_model, "nuclei")
        self._runners: dict[tuple[str, int], CellposeNetRunner] = {}

    def _runner(self, kind: str, working_size: int) -> CellposeNetRunner:
        key = (kind, working_size)
        if key not in self._runners:
            cell_d, nucleus_d = default_diameters(working_size)
            if kind == "cells":
                spec, diameter = self._cell_spec, self.settings.cell_diameter or cell_d
            else:
                spec, diameter = self._nucleus_spec, self.settings.nucleus_diameter or nucleus_d
            self._runners[key] = CellposeNetRunner(spec, diameter, self.settings.device, self.flow)
            logger.info("%s model %s: diameter %.1f px at working size %d (rescale %.3f)",
                        kind, spec.name, diameter, working_size, self._runners[key].rescale)
        return self._runners[key]

    def segment_batch(self, images: Sequence[np.ndarray]) -> list[SegmentationResult]:
        """Segment `4,H,W` uint8 fields; images of the same `H,W` share one network pass per model.

        Only same-shape images are stacked: padding a smaller image to its neighbours' shape would change
        CPnet's global style vector (an average over the whole input) and so make an image's masks depend on
        the other images of its batch.
        """
        for index, image in enumerate(images):
            check_field_image(image, f"image {index} of the batch")
        groups: dict[tuple[int, int], list[int]] = {}
        for index, image in enumerate(images):
            groups.setdefault((int(image.shape[1]), int(image.shape[2])), []).append(index)
        results: list[SegmentationResult | None] = [None] * len(images)
        for shape_hw, indices in groups.items():
            working_size = max(shape_hw)
            batch = [images[i] for i in indices]
            tolerance = self.settings.diameter_tolerance
            cell_inputs = [cellpose_input(im, "cells", self.settings.use_er) for im in batch]
            nuclei = self._runner("nuclei", working_size).segment(
                [cellpose_input(im, "nuclei") for im in batch], tolerance)
            if self.settings.cell_assembly == "nuclei":
                evidence = self._runner("cells", working_size).cell_evidence(cell_inputs)
                cells = [grow_cells_from_nuclei(im, n, logits, self.seeded, divergence)
                         for im, n, (logits, divergence) in zip(batch, nuclei, evidence, strict=True)]
            else:
                cells = self._runner("cells", working_size).segment(cell_inputs, tolerance)
            for i, c, n in zip(indices, cells, nuclei, strict=True):
                results[i] = build_result(c, n, self.qc)
        return [r for r in results if r is not None]

    def provenance(self) -> dict[str, object]:
        return {
            "segmenter": self.name,
            "settings": asdict(self.settings),
            "flow": asdict(self.flow),
            "seeded": asdict(self.seeded),
            "qc": self.qc.to_dict(),
            "cell_model": self._cell_spec.provenance(),
            "nucleus_model": self._nucleus_spec.provenance(),
        }
