"""Prediction with a trained MIL model (crop or dense family): image probabilities, per-cell probabilities and
attention, and for dense models per-pixel class probability maps.

Every cell of an image gets its own probabilities (per-cell logits of the head); the image prediction pools
only the cells usable for training (QC flags not in the model's `exclude_flags`), falling back to all cells
when an image has none. Attention is 0 for cells left out of the pooling. Both families give the same per-cell
table, so prediction files, evaluation and maps do not depend on the family.

What a cell's class probability in that table is (`CELL_SCORES`, chosen by `cell_score`):
- `gated` (the default): `sqrt(p_cell * p_image)`, the geometric mean of the cell's own probability and its image's.
  A cell can only show a class its image shows, and the image prediction (pooled over every cell) is the surer of
  the two, so gating by it ranks cells across images better: on the MIL benchmark's validation cells it raised the
  attention MIL's cell mAP from 0.337 to 0.402 (BENCHMARKS.md). Within one image and class the order of the
  cells is the cells' own, so a class panel keeps its pattern; a cell's top label is the argmax of the gated
  scores, so it can differ from the argmax of its own probabilities. The cell's own probability is
  `gated ** 2 / p_image`. A dense model's per-pixel maps are never gated.
- `cell`: the cell's own probability only (what the head's per-cell logits say).

Batching (`PredictionBatching`, `prediction_batching`): on the CPU, 8 images per forward pass in float32, as
always. On a GPU, bags are grouped up to 256 images and 4,096 cells per pass (counting the padding of every bag to
the group's largest), copied through page-locked memory without waiting, and run under bf16 autocast where the GPU
supports it; a background thread reads the next groups from the cache while the GPU works. The probabilities then
differ from float32 ones by rounding only (about 1e-3; `tests/test_gpu_stages.py` checks them against the CPU's).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd
import torch

from hpa_cells.cache import CellCache
from hpa_cells.classes import CLASS_NAMES
from hpa_cells.crops import CropConfig, extract_cell_crops
from hpa_cells.devices import resolve_device, supports_bf16
from hpa_cells.predictions import CELL_SCORES, Predictions
from hpa_cells.qc_flags import DEFAULT_EXCLUDE_FLAGS, flag_bits
from mil.families import get_family
from mil.model_folder import LoadedModel
from mil.prediction_batches import BagInput

logger = logging.getLogger(__name__)


def require_cell_score(cell_score: str) -> None:
    """ValueError naming the choices unless `cell_score` is a key of `CELL_SCORES`."""
    if cell_score not in CELL_SCORES:
        raise ValueError(f"unknown cell score {cell_score!r}; choose one of {', '.join(CELL_SCORES)}")


def score_cells(cell_probs: np.ndarray, image_probs: np.ndarray, cell_score: str) -> np.ndarray:
    """The `C,K` class probabilities of one image's cells by the rule `cell_score` (see `CELL_SCORES`), from their
    own probabilities `C,K` and the image's `K`."""
    require_cell_score(cell_score)
    if cell_probs.ndim != 2 or image_probs.shape != (cell_probs.shape[1],):
        raise ValueError(f"cell probabilities {cell_probs.shape} and image probabilities {image_probs.shape} "
                         "must be C,K and K")
    if cell_score == "cell":
        return cell_probs
    return np.sqrt(cell_probs.astype(np.float64) * image_probs.astype(np.float64)).astype(cell_probs.dtype)


PixelMapSink = Callable[[str, np.ndarray, tuple[int, int]], None]
"""Receives (image_id, `K,h,w` uint8 pixel probabilities, working size) for each image a dense model predicts."""


def bags_from_cache(cache_path: str | os.PathLike[str], exclude_flags: Sequence[str],
                    content: str = "crops", image_ids: Collection[str] | None = None) -> Iterator[BagInput]:
    """Every image of a cell cache as a `BagInput`, in storage order, or only those of `image_ids` (the others are
    never read); `content` "crops" reads the crops and masks, "fields" the full images and cell label maps (a
    schema-2 cache)."""
    wanted = None if image_ids is None else set(image_ids)
    with CellCache(cache_path) as cache:
        if content == "fields":
            cache.require_full_images("the dense model")
        table = cache.cell_table()
        bits = flag_bits(exclude_flags, cache.qc_flag_names, cache_path=cache.path)
        for index, image_id in enumerate(cache.image_ids):
            if wanted is not None and image_id not in wanted:
                continue
            rows = cache.cell_slice(index)
            cells = table.iloc[rows].reset_index(drop=True)
            usable = (cells["qc_flags"].to_numpy().astype(np.int64) & bits) == 0
            if content == "fields":
                yield BagInput(image_id, None, None, usable, cells, cache.full_image(index), cache.full_masks(index)[0])
            else:
                crops, masks = cache.cells_of(index)
                yield BagInput(image_id, crops, masks, usable, cells)


def bags_from_masks(fields: Iterable[tuple[str, np.ndarray, np.ndarray, np.ndarray]],
                    crop: CropConfig, content: str = "crops") -> Iterator[BagInput]:
    """Bags cut from given masks (e.g. the true masks of synthetic data): (image_id, image `4,H,W`, cells `H,W`,
    nuclei `H,W`) each; every cell is usable. `content` as in `bags_from_cache`."""
    for image_id, image, cells_hw, nuclei_hw in fields:
        cut = extract_cell_crops(image, cells_hw, nuclei_hw, config=crop)
        table = cut.table.copy()
        table.insert(0, "image_id", image_id)
        if content == "fields":
            yield BagInput(image_id, None, None, np.ones(len(cut), bool), table, image, cells_hw)
        else:
            yield BagInput(image_id, cut.crops, cut.masks, np.ones(len(cut), bool), table)


CPU_IMAGES_PER_PASS = 8
GPU_IMAGES_PER_PASS = 256
GPU_CELLS_PER_PASS = 4096
"""Padded cells (images x the group's largest bag) of one forward pass on a GPU: 4,096 crops of 128 px are 0.27 GB
of uint8 to copy and about 2 GB as float32 inputs on the device, which fits GPUs of 8 GB and more."""


@dataclass(frozen=True)
class PredictionBatching:
    """How bags are grouped into forward passes, and the precision of the passes.

    images: bags per pass; cells: most padded cells per pass (bags x the group's largest bag; a bag larger than this
    is a pass of its own), None for no limit; bf16: bf16 autocast (CUDA only)."""

    images: int
    cells: int | None
    bf16: bool

    def __post_init__(self) -> None:
        if isinstance(self.images, bool) or not isinstance(self.images, int) or self.images < 1:
            raise ValueError(f"images per forward pass must be a whole number >= 1, got {self.images!r}")
        if self.cells is not None and (not isinstance(self.cells, int) or self.cells < 1):
            raise ValueError(f"cells per forward pass must be None or a whole number >= 1, got {self.cells!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def prediction_batching(device: str | torch.device, batch_size: int | None = None, cell_budget: int | None = None,
                        bf16: bool | None = None) -> PredictionBatching:
    """The batching of a prediction on `device` (resolved, e.g. by `hpa_cells.devices.resolve_device`): the given
    values, else on the CPU 8 images, no cell limit, float32; on a GPU 256 images up to 4,096 cells, bf16 where
    the GPU supports it. ValueError for bf16 on a device without it."""
    device = str(device)
    gpu = device.startswith("cuda")
    if bf16 is None:
        bf16 = supports_bf16(device)
    elif bf16 and not supports_bf16(device):
        raise ValueError(f"bf16 prediction needs a CUDA GPU with bf16 support; {device} has none")
    if batch_size is None:
        batch_size = GPU_IMAGES_PER_PASS if gpu else CPU_IMAGES_PER_PASS
    if cell_budget is None and gpu:
        cell_budget = GPU_CELLS_PER_PASS
    return PredictionBatching(batch_size, cell_budget, bool(bf16))


def _batched(bags: Iterable[BagInput], batching: PredictionBatching) -> Iterator[list[BagInput]]:
    """Groups of bags in order: at most `batching.images` bags and `batching.cells` padded cells each."""
    batch: list[BagInput] = []
    widest = 0
    for bag in bags:
        if len(bag) == 0:
            logger.warning("image %s has no cells; it gets no prediction", bag.image_id)
            continue
        wider = max(widest, len(bag))
        over_cells = batching.cells is not None and (len(batch) + 1) * wider > batching.cells
        if batch and (len(batch) == batching.images or over_cells):
            yield batch
            batch, wider = [], len(bag)
        batch.append(bag)
        widest = wider
    if batch:
        yield batch


Item = TypeVar("Item")


def _prefetched(items: Iterator[Item], depth: int = 2) -> Iterator[Item]:
    """`items` in order, made up to `depth` ahead in a background thread (the cache is read while the device
    works). An error in the thread is raised here; stopping early stops (and closes) `items` in the thread."""
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def put(entry: tuple) -> bool:
        while not stop.is_set():
            try:
                ready.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((end, None))
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, which raises it
            put((end, err))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="predict-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, error = ready.get()
            if error is not None:
                raise error
            if item is end:
                return
            yield item
    finally:
        stop.set()
        thread.join()


def _cell_frame(bag: BagInput, used: np.ndarray, probs: np.ndarray, attention: np.ndarray) -> pd.DataFrame:
    """The bag's rows of cells.csv: its table, used_for_image, class probabilities, top label, attention."""
    k = len(bag)
    frame = bag.cells.copy()
    frame["used_for_image"] = used
    for c, name in enumerate(CLASS_NAMES[: probs.shape[1]]):
        frame[name] = probs[:, c]
    top = probs.argmax(axis=1)
    frame["top_label_id"] = top
    frame["top_label"] = [CLASS_NAMES[t] for t in top]
    frame["top_probability"] = probs[np.arange(k), top]
    frame["attention"] = attention[np.arange(k), top] if attention.shape[1] > 1 else attention[:, 0]
    return frame


@torch.no_grad()
def predict_bags(loaded: LoadedModel, bags: Iterable[BagInput], batch_size: int | None = None,
                 device: str | torch.device = "cpu", show_progress: bool = False,
                 total: int | None = None, pixel_maps: PixelMapSink | None = None,
                 cell_score: str = "gated", *, cell_budget: int | None = None, bf16: bool | None = None) -> Predictions:
    """Run the model over bags (all cells of each image). `pixel_maps` receives a dense model's per-pixel maps;
    `cell_score` says what the cells' class probabilities are (`CELL_SCORES`). `device` may be "auto"; `batch_size`
    (images per pass), `cell_budget` (padded cells per pass) and `bf16` default by device (`prediction_batching`)."""
    require_cell_score(cell_score)
    from tqdm import tqdm

    device = resolve_device(str(device))
    batching = prediction_batching(device, batch_size, cell_budget, bf16)
    model = loaded.model.to(device).eval()
    run_group = get_family(loaded.config.family).predict_group
    precision = (torch.autocast(device_type="cuda", dtype=torch.bfloat16) if batching.bf16
                 else contextlib.nullcontext())
    image_ids: list[str] = []
    image_probs: list[np.ndarray] = []
    cell_frames: list[pd.DataFrame] = []
    attention_rows: list[np.ndarray] = []
    bar = tqdm(total=total, desc="predict", unit="image", disable=not show_progress)
    for group in _prefetched(_batched(bags, batching)):
        with precision:
            out = run_group(model, group, device)
        for i, bag in enumerate(group):
            k = len(bag)
            image_ids.append(bag.image_id)
            image_probs.append(out.image_probs[i])
            att = out.attention[i, :k].reshape(k, -1)
            cell_probs = score_cells(out.cell_probs[i, :k], out.image_probs[i], cell_score)
            cell_frames.append(_cell_frame(bag, out.usable[i, :k].numpy(), cell_probs, att))
            attention_rows.append(att)
            if pixel_maps is not None and out.pixel_maps is not None:
                pixel_maps(bag.image_id, out.pixel_maps[i], tuple(bag.cells_hw.shape))
        bar.update(len(group))
    bar.close()
    if not image_ids:
        raise ValueError("no image with cells to predict")
    return Predictions(image_ids, np.vstack(image_probs), pd.concat(cell_frames, ignore_index=True),
                       np.vstack(attention_rows), loaded.thresholds, cell_score)


WHOLE_FIELD_SEGMENTER = "whole_field"
"""The cache `segmenter` of `segmentation.whole_field` (one "cell" per field: no segmentation)."""


class CacheModelMismatchError(ValueError):
    """A cell cache made otherwise than the model's training cache (crop size, or whole fields vs cells)."""


def _cache_kind(segmenter: object) -> str:
    return "whole fields" if segmenter == WHOLE_FIELD_SEGMENTER else "cells"


def check_cache_matches_model(loaded: LoadedModel, cache_path: Path, crop_size: int, segmenter: str) -> str | None:
    """CacheModelMismatchError naming both values when the cache (its `crop_size`, its `segmenter`) differs from the
    model's training cache, as its config.json `training.cache_provenance` records it: whole fields vs cells (any
    family), or another crop size (crop family: a dense model reads whole fields, not crops). A model folder
    without that record (written before it was kept) cannot be checked: the warning line is returned instead."""
    trained = loaded.training.get("cache_provenance")
    if not isinstance(trained, dict) or "crop_size" not in trained or "segmenter" not in trained:
        return (f"model {loaded.folder} does not record the crop size and segmenter of its training cache (an older "
                f"model folder): {cache_path} cannot be checked against it")
    kind, trained_kind = _cache_kind(segmenter), _cache_kind(trained["segmenter"])
    if kind != trained_kind:
        raise CacheModelMismatchError(
            f"{cache_path} holds {kind} (segmenter {segmenter}) but model {loaded.folder} was trained on "
            f"{trained_kind} (segmenter {trained['segmenter']}); segment with the model's segmenter or give a model "
            f"trained on {kind}")
    if get_family(loaded.config.family).inputs == "crops" and int(trained["crop_size"]) != int(crop_size):
        raise CacheModelMismatchError(
            f"{cache_path} holds {crop_size} px crops but model {loaded.folder} was trained on "
            f"{int(trained['crop_size'])} px crops; re-segment with --crop-size {int(trained['crop_size'])} or give "
            f"a model trained on {crop_size} px crops")
    return None


def model_exclude_flags(loaded: LoadedModel) -> tuple[str, ...]:
    """The QC flags the model was trained without (its training config), else the default."""
    return tuple(loaded.training.get("exclude_flags", DEFAULT_EXCLUDE_FLAGS))


def predict_cache(loaded: LoadedModel, cache_path: Path, batch_size: int | None = None,
                  device: str | torch.device = "cpu", show_progress: bool = True, pixel_maps_path: Path | None = None,
                  cell_score: str = "gated", *, cell_budget: int | None = None, bf16: bool | None = None) -> Predictions:
    """Predict every image of a cell cache; a dense model's pixel maps go to `pixel_maps_path` when given (see
    `hpa_cells.pixel_maps`); `cell_score`, `batch_size`, `cell_budget` and `bf16` as in `predict_bags`."""
    from hpa_cells.pixel_maps import PixelMapWriter

    with CellCache(cache_path) as cache:
        total = cache.num_images
    family = get_family(loaded.config.family)
    bags = bags_from_cache(cache_path, model_exclude_flags(loaded), family.inputs)
    options = {"cell_score": cell_score, "cell_budget": cell_budget, "bf16": bf16}
    if pixel_maps_path is None or not family.pixel_maps:
        return predict_bags(loaded, bags, batch_size, device, show_progress, total, **options)
    with PixelMapWriter(pixel_maps_path) as writer:
        return predict_bags(loaded, bags, batch_size, device, show_progress, total, pixel_maps=writer.add, **options)
