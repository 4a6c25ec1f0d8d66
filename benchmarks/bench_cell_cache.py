"""Cell cache throughput and the choice of compression, as a markdown table for BENCHMARKS.md.

For each compression (gzip level 1 and 4, lzf, none) it writes a cache of `--images` images x
`--cells` cells of S x S crops through CellCacheWriter (journal shards, fsync, merge: the real path),
then reads random bags (all cells of a random image) and reports file size per cell, write cells/s,
bag reads/s, and the cost of appending a few images to the finished cache. Ratios are against
`none` measured in the same process.

Crops are real cells when ../shared/data (or $HPA_REAL_DATA) is present: the HPA 2021 fields shrunk
to 512 px and cut with HPA's own cell masks, reused with flips and rotations; compression ratios on
random noise would be meaningless. Without the data it falls back to smooth synthetic blobs and
says so in the table.

    .venv/bin/python benchmarks/bench_cell_cache.py [--images 300 --cells 20 --crop-size 128]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import cv2
import h5py
import numpy as np
import pandas as pd
from skimage.filters import threshold_otsu

from hpa_cells.cache import CacheProvenance, CellCache, CellCacheWriter
from hpa_cells.cache.schema import COMPRESSIONS
from hpa_cells.channels import CHANNELS
from hpa_cells.crops import CropConfig, extract_cell_crops

DEFAULT_COMPRESSIONS = ("gzip1", "gzip4", "lzf", "none")
WORKING_SIZE = 512


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--images", type=int, default=300, help="images per cache")
    parser.add_argument("--cells", type=int, default=20, help="cells per image")
    parser.add_argument("--crop-size", type=int, default=128, help="crop side S")
    parser.add_argument("--reads", type=int, default=300, help="random bag reads per cache")
    parser.add_argument("--append-images", type=int, default=10, help="images appended to the finished cache")
    parser.add_argument("--compressions", default=",".join(DEFAULT_COMPRESSIONS), help="comma-separated list")
    parser.add_argument(
        "--data", type=Path, default=None, help="real data folder (default ../shared/data or $HPA_REAL_DATA)"
    )
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="where caches are written (default: a temp folder)"
    )
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


@dataclass
class CellPool:
    """Crops, masks and records to draw cells from, plus one field's full masks; `source` says where from."""

    crops: np.ndarray  # N,4,S,S uint8
    masks: np.ndarray  # N,S,S uint8
    records: pd.DataFrame  # crops.CELL_RECORD_COLUMNS
    cells_hw: np.ndarray  # H,W
    nuclei_hw: np.ndarray  # H,W
    image_chw: np.ndarray  # 4,H,W uint8: the field the full masks belong to
    source: str


def real_pool(data: Path, crop_size: int) -> CellPool:
    """Every cell of the HPA 2021 fields, shrunk to 512 px, cut with HPA's cell masks (nuclei: the
    blue channel above its Otsu threshold inside cells)."""
    folder = data / "hpa2021_subset"
    crops, masks, records = [], [], []
    cells_hw = nuclei_hw = field_chw = None
    for mask_path in sorted((folder / "masks").glob("*_predictedmask.png")):
        image_id = mask_path.name.split("_")[0]
        channels = [
            cv2.resize(
                cv2.imread(str(folder / "images" / f"{image_id}_{c}.png"), cv2.IMREAD_UNCHANGED),
                (WORKING_SIZE, WORKING_SIZE),
                interpolation=cv2.INTER_AREA,
            )
            for c in CHANNELS
        ]
        image_chw = np.stack(channels)
        cells = cv2.resize(
            cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED),
            (WORKING_SIZE, WORKING_SIZE),
            interpolation=cv2.INTER_NEAREST,
        )
        nuclei = np.where(image_chw[2] > threshold_otsu(image_chw[2]), cells, 0)
        cut = extract_cell_crops(image_chw, cells, nuclei, config=CropConfig(crop_size=crop_size))
        crops.append(cut.crops)
        masks.append(cut.masks)
        records.append(cut.table)
        cells_hw, nuclei_hw, field_chw = cells, nuclei, image_chw
    if not crops:
        raise FileNotFoundError(f"no *_predictedmask.png under {folder / 'masks'}")
    return CellPool(
        np.concatenate(crops),
        np.concatenate(masks),
        pd.concat(records, ignore_index=True),
        cells_hw,
        nuclei_hw,
        field_chw,
        f"real: {sum(len(c) for c in crops)} HPA 2021 cells (5 fields at 512 px), flipped/rotated",
    )


def synthetic_pool(crop_size: int, seed: int) -> CellPool:
    """Smooth random blobs with noise, for machines without the real data."""
    rng = np.random.default_rng(seed)
    size = WORKING_SIZE
    yy, xx = np.mgrid[:size, :size]
    cells = np.zeros((size, size), dtype=np.int32)
    for cell_id in range(1, 41):
        cy, cx = rng.integers(40, size - 40, 2)
        ry, rx = rng.integers(20, 50, 2)
        cells[(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1) & (cells == 0)] = cell_id
    smooth = cv2.GaussianBlur(
        rng.normal(0, 1, (4, size, size)).astype(np.float32).transpose(1, 2, 0), (0, 0), 6
    ).transpose(2, 0, 1)
    image_chw = np.clip(60 + 400 * smooth + rng.normal(0, 6, smooth.shape), 0, 255).astype(np.uint8) * (
        cells > 0
    )
    nuclei = np.where((((yy % 64) - 32) ** 2 + ((xx % 64) - 32) ** 2) < 200, cells, 0)
    cut = extract_cell_crops(
        image_chw.astype(np.uint8), cells, nuclei, config=CropConfig(crop_size=crop_size)
    )
    return CellPool(cut.crops, cut.masks, cut.table, cells, nuclei, image_chw.astype(np.uint8),
                    "synthetic blobs (real data not found)")


def image_from_pool(
    pool: CellPool, rng: np.random.Generator, cells: int
) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """`cells` pool cells in random flips/rotations, with cell ids 1..cells."""
    picks = rng.integers(0, len(pool.crops), cells)
    k = int(rng.integers(0, 4))
    flip = bool(rng.integers(0, 2))
    crops = np.rot90(pool.crops[picks], k, axes=(2, 3))
    masks = np.rot90(pool.masks[picks], k, axes=(1, 2))
    if flip:
        crops, masks = crops[..., ::-1], masks[..., ::-1]
    records = pool.records.iloc[picks].reset_index(drop=True).assign(cell_id=np.arange(1, cells + 1))
    return np.ascontiguousarray(crops), np.ascontiguousarray(masks), records


@dataclass
class Result:
    """One compression's measurements."""

    compression: str
    bytes_per_cell: float
    write_cells_per_s: float
    merge_s: float
    bags_per_s: float
    append_s: float


def run_one(compression: str, pool: CellPool, args: argparse.Namespace, work_dir: Path) -> Result:
    """Write, read and append to one cache with one compression."""
    path = work_dir / f"cells_{compression}.h5"
    provenance = CacheProvenance("benchmark", "", {"compression": compression})
    rng = np.random.default_rng(args.seed)
    images = [image_from_pool(pool, rng, args.cells) for _ in range(args.images + args.append_images)]
    cells_hw = pool.cells_hw.astype(np.uint16)
    nuclei_hw = pool.nuclei_hw.astype(np.uint16)
    labels = np.zeros(28, dtype=np.uint8)
    labels[0] = 1

    start = time.perf_counter()
    writer = CellCacheWriter(path, args.crop_size, provenance, ["border"], compression=compression)
    for index, (crops, masks, records) in enumerate(images[: args.images]):
        writer.add_image(f"img{index:05d}", crops, masks, records, cells_hw, nuclei_hw, (2048, 2048), labels,
                         image_chw=pool.image_chw)
    merge_start = time.perf_counter()
    writer.close()
    end = time.perf_counter()
    cells = args.images * args.cells
    size = path.stat().st_size

    with CellCache(path) as cache:
        order = np.random.default_rng(args.seed + 1).integers(0, cache.num_images, args.reads)
        cache.cells_of(0)  # open the handle outside the timing
        read_start = time.perf_counter()
        for index in order:
            cache.cells_of(int(index))
        read_s = time.perf_counter() - read_start

    append_start = time.perf_counter()
    with CellCacheWriter(path, args.crop_size, provenance, ["border"]) as writer:
        for index, (crops, masks, records) in enumerate(images[args.images :]):
            writer.add_image(
                f"extra{index:05d}", crops, masks, records, cells_hw, nuclei_hw, (2048, 2048), labels,
                image_chw=pool.image_chw,
            )
    append_s = time.perf_counter() - append_start
    path.unlink()
    return Result(
        compression, size / cells, cells / (end - start), end - merge_start, args.reads / read_s, append_s
    )


def extraction_rate(pool_source: str, data: Path | None, crop_size: int) -> str:
    """Cells per second of extract_cell_crops on one real 512 px field (or a synthetic one)."""
    if data is not None and pool_source.startswith("real"):
        folder = data / "hpa2021_subset"
        mask_path = sorted((folder / "masks").glob("*_predictedmask.png"))[-1]
        image_id = mask_path.name.split("_")[0]
        image_chw = np.stack(
            [
                cv2.resize(
                    cv2.imread(str(folder / "images" / f"{image_id}_{c}.png"), cv2.IMREAD_UNCHANGED),
                    (WORKING_SIZE, WORKING_SIZE),
                )
                for c in CHANNELS
            ]
        )
        cells = cv2.resize(
            cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED),
            (WORKING_SIZE, WORKING_SIZE),
            interpolation=cv2.INTER_NEAREST,
        )
    else:
        image_chw = np.zeros((4, WORKING_SIZE, WORKING_SIZE), np.uint8)
        cells = synthetic_pool(crop_size, 0).cells_hw
    repeats = 20
    start = time.perf_counter()
    for _ in range(repeats):
        cut = extract_cell_crops(image_chw, cells, cells, config=CropConfig(crop_size=crop_size))
    seconds = (time.perf_counter() - start) / repeats
    return f"{len(cut)} cells in {1000 * seconds:.1f} ms per field ({len(cut) / seconds:.0f} cells/s)"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    compressions = [c for c in args.compressions.split(",") if c]
    unknown = [c for c in compressions if c not in COMPRESSIONS]
    if unknown:
        raise SystemExit(f"unknown compressions {unknown}; choose from {sorted(COMPRESSIONS)}")
    data = args.data or Path(
        os.environ.get("HPA_REAL_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
    )
    try:
        pool = real_pool(data, args.crop_size)
    except FileNotFoundError:
        pool = synthetic_pool(args.crop_size, args.seed)
    own_dir = args.work_dir is None
    work_dir = Path(tempfile.mkdtemp(prefix="bench_cell_cache_")) if own_dir else args.work_dir
    work_dir.mkdir(parents=True, exist_ok=True)
    try:
        results = []
        for compression in compressions:
            print(f"... {compression}", file=sys.stderr, flush=True)
            results.append(run_one(compression, pool, args, work_dir))
    finally:
        if own_dir:
            shutil.rmtree(work_dir, ignore_errors=True)
    baseline = next((r for r in results if r.compression == "none"), results[0])
    raw = 5 * args.crop_size * args.crop_size
    print("### Cell cache: compression and throughput\n")
    print(f"- date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}")
    print(
        f"- machine: {platform.node()}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, h5py {h5py.__version__} / HDF5 {h5py.version.hdf5_version}"
    )
    print(f"- command: `{' '.join([Path(sys.executable).name, *sys.argv])}`")
    print(
        f"- data: {pool.source}; {args.images} images x {args.cells} cells, S={args.crop_size}; raw crop+mask {raw / 1024:.0f} KiB/cell"
    )
    print(f"- crop extraction: {extraction_rate(pool.source, data, args.crop_size)}")
    print(
        f"- write = CellCacheWriter end to end (one fsync'ed journal shard per image, then the merge); bag read = `cells_of` of a random image ({args.reads} reads); append = {args.append_images} images added to the finished cache (copy + merge)\n"
    )
    print(
        "| compression | KiB/cell | size vs none | write cells/s | write vs none | of which merge s | bag reads/s | read vs none | append s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r.compression} | {r.bytes_per_cell / 1024:.1f} | {r.bytes_per_cell / baseline.bytes_per_cell:.2f} | "
            f"{r.write_cells_per_s:.0f} | {r.write_cells_per_s / baseline.write_cells_per_s:.2f} | {r.merge_s:.2f} | "
            f"{r.bags_per_s:.0f} | {r.bags_per_s / baseline.bags_per_s:.2f} | {r.append_s:.2f} |"
        )


if __name__ == "__main__":
    main()
