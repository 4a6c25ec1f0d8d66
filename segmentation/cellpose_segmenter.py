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

Speed (the GPU path): the network passes run on `CellposeSettings.device` ("auto": a GPU when torch sees one),
batched over fields (`network_batch_size` fields per pass); the CPU work of each field before and after them
(`segmentation.cellpose_pipeline`: input normalisation; flow dynamics, seeded growth, QC) can run in
`postprocess_workers` worker processes, so the network works on the next fields while the workers finish the
previous ones, within one `segment_batch` call (between its network batches) and across the batches of
`segment_stream`. The masks are the same with or without workers.
"""

from __future__ import annotations

import logging
import multiprocessing
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from hpa_cells.devices import resolve_device
from segmentation.cellpose_models import CellposeNetSpec, build_network, resolve_model
from segmentation.cellpose_pipeline import (  # noqa: F401  (cellpose_input, normalize_percentile: this module's API)
    CELL_ASSEMBLIES,
    FieldStages,
    MaskSettings,
    NetworkOutput,
    cellpose_input,
    evidence_from_outputs,
    finish_field,
    flows_to_mask,
    normalize_percentile,
    prepare_field,
    quiet_worker,
    scale_to_network,
    warm_worker,
)
from segmentation.preprocessing import FieldImageError, check_field_image
from segmentation.quality_control import QCConfig
from segmentation.result import SegmentationResult
from segmentation.seeded_cells import SeededCellSettings

logger = logging.getLogger(__name__)

REFERENCE_WORKING_SIZE = 512
CELL_DIAMETER_AT_512 = 80.0
NUCLEUS_DIAMETER_AT_512 = 40.0
EDGE_MARGIN = 8
"""Zeros (px at network scale) around every network input, as Cellpose's `run_net` pads."""
SIZE_ESTIMATE_SCALE = 2 / 3
"""Object size (fraction of the network's `diam_mean`) in the cheap pass that measures diameters for refinement:
within about 10% of the full-scale measurement on the synthetic and real fields, at under half the cost."""


def default_diameters(working_size: int) -> tuple[float, float]:
    """(cell, nucleus) diameters in pixels for images whose longer side is `working_size`."""
    scale = working_size / REFERENCE_WORKING_SIZE
    return CELL_DIAMETER_AT_512 * scale, NUCLEUS_DIAMETER_AT_512 * scale


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
        if net is None:  # channels-last weights: faster convolutions (oneDNN, cuDNN); a caller's network is left as is
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

    @property
    def mask_settings(self) -> MaskSettings:
        """The flow-dynamics settings of this network's outputs (the smallest object scaled to its `diam_mean`)."""
        min_size = int(self.flow.min_size_fraction * np.pi * (self.spec.diam_mean / 2) ** 2)
        return MaskSettings(self.flow.niter, self.flow.cellprob_threshold, self.flow.flow_threshold, min_size)

    def network_outputs(self, inputs: Sequence[np.ndarray], rescale: float | None = None,
                        ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Run the network once over a batch of `2,H,W` inputs; returns (flows `2,h,w`, cellprob `h,w`) per
        input at network scale. `rescale` overrides the runner's own (`diam_mean / diameter`)."""
        factor = self.rescale if rescale is None else rescale
        return self.run_scaled([scale_to_network(x, factor) for x in inputs])

    def run_scaled(self, scaled: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """The network over inputs already at network scale (`scale_to_network`): one pass on the device.

        Each input is surrounded by zeros as in Cellpose's own `run_net` (`transforms.get_pad_yx`: the size is
        rounded up to a multiple of 16 plus 8 px on every side, the input centred), and inputs of different
        shapes share the largest such canvas. Without that margin the network's outputs at the image edge differ
        from Cellpose's, and the flow-error check then discards many whole cells (BENCHMARKS.md).
        """
        offsets = [(EDGE_MARGIN + (-s.shape[1] % 16) // 2, EDGE_MARGIN + (-s.shape[2] % 16) // 2) for s in scaled]
        ph = max(s.shape[1] + (-s.shape[1] % 16) for s in scaled) + 2 * EDGE_MARGIN
        pw = max(s.shape[2] + (-s.shape[2] % 16) for s in scaled) + 2 * EDGE_MARGIN
        batch = torch.zeros((len(scaled), 2, ph, pw), dtype=torch.float32,
                            pin_memory=self.device.type == "cuda")  # page-locked: an asynchronous copy
        for i, ((oy, ox), s) in enumerate(zip(offsets, scaled, strict=True)):
            batch[i, :, oy:oy + s.shape[1], ox:ox + s.shape[2]] = torch.from_numpy(s)
        with torch.inference_mode():
            tensor = batch.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            out = self.net(tensor)[0].float().cpu().contiguous().numpy()
        return [(out[i, :2, oy:oy + s.shape[1], ox:ox + s.shape[2]], out[i, 2, oy:oy + s.shape[1], ox:ox + s.shape[2]])
                for i, ((oy, ox), s) in enumerate(zip(offsets, scaled, strict=True))]

    def cell_evidence(self, inputs: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """For a batch of `2,H,W` inputs (one network pass): the cell-probability logits and the divergence of
        the predicted flows, each resized to its input's `H,W` (`cellpose_pipeline.evidence_from_outputs`)."""
        return [evidence_from_outputs(flows, prob, x.shape[1:])
                for (flows, prob), x in zip(self.network_outputs(inputs), inputs, strict=True)]

    def masks_from_outputs(self, flows: np.ndarray, cellprob: np.ndarray, shape_hw: tuple[int, int]) -> np.ndarray:
        """Follow the flows at network scale, then resize the label mask to `shape_hw` (nearest)."""
        return flows_to_mask(flows, cellprob, shape_hw, self.mask_settings)

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
    """Where the networks run: "cpu", "cuda", "cuda:N", or "auto" (`hpa_cells.devices.resolve_device`)."""
    cell_assembly: str = "nuclei"
    """"nuclei": grow one cell from each nucleus over the cell network's foreground (`segmentation.seeded_cells`);
    "flows": Cellpose's flow following. See the module docstring."""

    def __post_init__(self) -> None:
        if self.cell_assembly not in CELL_ASSEMBLIES:
            raise ValueError(f"cell_assembly must be one of {', '.join(CELL_ASSEMBLIES)}, got {self.cell_assembly!r}")


@dataclass
class _Batch:
    """One batch in flight: its fields, their same-shape groups, and a future per field for each CPU stage."""

    images: list[np.ndarray]
    groups: dict[tuple[int, int], list[int]] = field(default_factory=dict)
    prepared: dict[int, Future] = field(default_factory=dict)
    finished: dict[int, Future] = field(default_factory=dict)


def _done(function: Callable, *args: object) -> Future:
    """`function(*args)` run now, as a finished future (its result or its exception)."""
    future: Future = Future()
    try:
        future.set_result(function(*args))
    except Exception as err:  # noqa: BLE001 - kept for the caller, exactly as a worker process would
        future.set_exception(err)
    return future


class CellposeSegmenter:
    """Segments cells and nuclei of HPA fields with two Cellpose networks; see the module docstring.

    `postprocess_workers` (0: none, everything in this process) worker processes run each field's CPU stages
    (`segmentation.cellpose_pipeline`); they start with the first batch and stop with `close()` (or at exit).
    `network_batch_size` caps the fields of one network pass (None: every same-shape field of a batch at once);
    within a `segment_batch` call the workers finish one network batch while the network runs the next.
    Neither changes the masks. Use as a context manager to stop the workers when done. The workers are started
    with "spawn": a script that uses them needs the `if __name__ == "__main__":` guard.
    """

    name = "cellpose"

    def __init__(self, settings: CellposeSettings | None = None, qc: QCConfig | None = None,
                 flow: FlowSettings | None = None, seeded: SeededCellSettings | None = None, *,
                 postprocess_workers: int = 0, network_batch_size: int | None = None) -> None:
        if isinstance(postprocess_workers, bool) or not isinstance(postprocess_workers, int) or postprocess_workers < 0:
            raise ValueError(f"postprocess_workers must be a whole number >= 0, got {postprocess_workers!r}")
        if network_batch_size is not None and (not isinstance(network_batch_size, int) or network_batch_size < 1):
            raise ValueError(f"network_batch_size must be None or a whole number >= 1, got {network_batch_size!r}")
        self.settings = settings or CellposeSettings()
        self.qc = qc or QCConfig()
        self.flow = flow or FlowSettings()
        self.seeded = seeded or SeededCellSettings()
        self.postprocess_workers = postprocess_workers
        self.network_batch_size = network_batch_size
        self.device = resolve_device(self.settings.device)
        self._cell_spec = resolve_model(self.settings.cell_model, "cells")
        self._nucleus_spec = resolve_model(self.settings.nucleus_model, "nuclei")
        self._runners: dict[tuple[str, int], CellposeNetRunner] = {}
        self._pool: ProcessPoolExecutor | None = None
        self._warming: list[Future] = []

    def _runner(self, kind: str, working_size: int) -> CellposeNetRunner:
        key = (kind, working_size)
        if key not in self._runners:
            cell_d, nucleus_d = default_diameters(working_size)
            if kind == "cells":
                spec, diameter = self._cell_spec, self.settings.cell_diameter or cell_d
            else:
                spec, diameter = self._nucleus_spec, self.settings.nucleus_diameter or nucleus_d
            self._runners[key] = CellposeNetRunner(spec, diameter, self.device, self.flow)
            logger.info("%s model %s on %s: diameter %.1f px at working size %d (rescale %.3f)",
                        kind, spec.name, self.device, diameter, working_size, self._runners[key].rescale)
        return self._runners[key]

    def _stages(self, working_size: int) -> FieldStages:
        nuclei, cells = self._runner("nuclei", working_size), self._runner("cells", working_size)
        return FieldStages(self.settings.use_er, nuclei.rescale, cells.rescale, nuclei.mask_settings,
                           cells.mask_settings, self.settings.cell_assembly, self.seeded, self.qc)

    # ----- worker processes -----------------------------------------------------------------------------------

    def _call(self, function: Callable, *args: object) -> Future:
        """`function(*args)` in a worker process, or now in this one when there are no workers."""
        if self.postprocess_workers == 0:
            return _done(function, *args)
        try:
            return self._executor()[0].submit(function, *args)
        except BrokenProcessPool:  # a worker died while the pool was idle: new workers, the field is not lost
            logger.warning("a post-processing worker process died; starting %d new ones", self.postprocess_workers)
            self.close()
            return self._executor()[0].submit(function, *args)

    def _executor(self) -> tuple[ProcessPoolExecutor, list[Future]]:
        """The worker pool, started on first use with every worker loading the flow dynamics (`warm_worker`)."""
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.postprocess_workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=quiet_worker)
            weakref.finalize(self, self._pool.shutdown, cancel_futures=True)
            self._warming = [self._pool.submit(warm_worker) for _ in range(self.postprocess_workers)]
            logger.info("started %d post-processing worker processes", self.postprocess_workers)
        return self._pool, self._warming

    def start_workers(self) -> list[int]:
        """Start the worker processes now and wait until each has loaded the flow dynamics (else the first batch
        does: seconds, e.g. inside a benchmark's timing); their process ids (none without workers)."""
        if self.postprocess_workers == 0:
            return []
        return sorted({future.result() for future in self._executor()[1]})

    def close(self) -> None:
        """Stop the worker processes (a later batch starts new ones)."""
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool, self._warming = None, []

    def __enter__(self) -> CellposeSegmenter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __getstate__(self) -> dict:
        """Picklable (e.g. sent to a Dask worker) without its worker processes and networks: the copy starts its own
        workers and loads the networks (on its `device`) when it first segments."""
        return {**self.__dict__, "_pool": None, "_warming": [], "_runners": {}}

    # ----- segmentation ---------------------------------------------------------------------------------------

    def segment_batch(self, images: Sequence[np.ndarray]) -> list[SegmentationResult]:
        """Segment `4,H,W` uint8 fields; images of the same `H,W` share one network pass per model (up to
        `network_batch_size` fields each).

        Only same-shape images are stacked: padding a smaller image to its neighbours' shape would change
        CPnet's global style vector (an average over the whole input) and so make an image's masks depend on
        the other images of its batch. The first field that fails raises (FieldImageError for a bad array).
        """
        for index, image in enumerate(images):
            check_field_image(image, f"image {index} of the batch")
        batch = self._start(images)
        self._run_networks(batch)
        return self._results(batch, return_exceptions=False)

    def segment_stream(self, batches: Iterable[Sequence[np.ndarray]], return_exceptions: bool = False,
                       ) -> Iterator[list[SegmentationResult | Exception]]:
        """The results of each batch of `batches`, in order, as `segment_batch` gives them, with the work
        overlapped: while the caller handles batch k (crops, writes), the workers finish batch k+1 and prepare
        batch k+2. With `return_exceptions`, a field that fails (a bad array, a failing stage) is its exception
        in the list instead of stopping the stream; a failing network pass still raises.
        """
        waiting: deque[_Batch] = deque()
        running: _Batch | None = None
        for images in batches:
            waiting.append(self._start(images))
            if len(waiting) < 2:
                continue
            ready = waiting.popleft()
            self._run_networks(ready)
            if running is not None:
                yield self._results(running, return_exceptions)
            running = ready
        while waiting:
            ready = waiting.popleft()
            self._run_networks(ready)
            if running is not None:
                yield self._results(running, return_exceptions)
            running = ready
        if running is not None:
            yield self._results(running, return_exceptions)

    def _start(self, images: Sequence[np.ndarray]) -> _Batch:
        """Group the fields by shape and submit their first CPU stage (a bad array fails its own field)."""
        batch = _Batch(list(images))
        for index, image in enumerate(batch.images):
            try:
                check_field_image(image, f"image {index} of the batch")
            except FieldImageError as err:
                batch.finished[index] = _done(_raise, err)
                continue
            batch.groups.setdefault((int(image.shape[1]), int(image.shape[2])), []).append(index)
        if self.settings.diameter_tolerance is None:  # refinement measures objects first: `_run_refined`
            for shape_hw, indices in batch.groups.items():
                stages = self._stages(max(shape_hw))
                for i in indices:
                    batch.prepared[i] = self._call(prepare_field, batch.images[i], stages)
        return batch

    def _run_networks(self, batch: _Batch) -> None:
        """The network passes of every group of the batch, in batches of `network_batch_size` fields; each field's
        last CPU stage is submitted as soon as its network outputs are there."""
        for shape_hw, indices in batch.groups.items():
            working_size = max(shape_hw)
            stages = self._stages(working_size)
            if self.settings.diameter_tolerance is not None:
                self._run_refined(batch, indices, working_size, stages)
                continue
            size = self.network_batch_size or len(indices)
            for start in range(0, len(indices), size):
                chunk = []
                for i in indices[start:start + size]:
                    if batch.prepared[i].exception() is None:
                        chunk.append(i)
                    else:
                        batch.finished[i] = batch.prepared[i]
                if not chunk:
                    continue
                scaled = [batch.prepared.pop(i).result() for i in chunk]
                nuclei = self._runner("nuclei", working_size).run_scaled([s[0] for s in scaled])
                cells = self._runner("cells", working_size).run_scaled([s[1] for s in scaled])
                for i, n, c in zip(chunk, nuclei, cells, strict=True):
                    batch.finished[i] = self._call(finish_field, batch.images[i], NetworkOutput(*n),
                                                   NetworkOutput(*c), stages)

    def _run_refined(self, batch: _Batch, indices: list[int], working_size: int, stages: FieldStages) -> None:
        """A group with diameter refinement: the nuclei (and with "flows" the cells) are segmented here, each field
        at its measured object size (`CellposeNetRunner.segment`); the rest of each field goes to `finish_field`."""
        tolerance = self.settings.diameter_tolerance
        images = [batch.images[i] for i in indices]
        nuclei = self._runner("nuclei", working_size).segment([cellpose_input(im, "nuclei") for im in images],
                                                              tolerance)
        cell_inputs = [cellpose_input(im, "cells", self.settings.use_er) for im in images]
        cells_runner = self._runner("cells", working_size)
        if self.settings.cell_assembly == "nuclei":  # the cell network runs once, at the assumed diameter
            cells: list = [NetworkOutput(f, p) for f, p in cells_runner.network_outputs(cell_inputs)]
        else:
            cells = cells_runner.segment(cell_inputs, tolerance)
        for i, image, n, c in zip(indices, images, nuclei, cells, strict=True):
            batch.finished[i] = self._call(finish_field, image, n, c, stages)

    def _results(self, batch: _Batch, return_exceptions: bool) -> list[SegmentationResult | Exception]:
        """Every field's result in input order (waiting for the workers); the first failure raises unless
        `return_exceptions`. A worker process that died takes the pool with it: the next batch starts a new one."""
        out: list[SegmentationResult | Exception] = []
        for index in range(len(batch.images)):
            try:
                out.append(batch.finished[index].result())
            except BrokenProcessPool:
                self.close()
                raise
            except Exception as err:
                if not return_exceptions:
                    raise
                out.append(err)
        return out

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


def _raise(error: Exception) -> None:
    raise error
