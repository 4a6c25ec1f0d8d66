"""Segmentation quality and speed: bundled Cellpose (batched; nuclei and flows cell assembly) vs a naive
CellposeModel.eval loop vs the watershed.

Quality: AP@0.5 / AP@0.75 against the real reference masks (the five 2021 fields at 512 px) and against the
exact masks of synthetic fields. Speed: the whole `segment` job (read PNGs, segment, QC, crops, HDF5 cache) in
images/s and cells/s, against a naive loop that calls Cellpose's own `CellposeModel.eval` once per image at
its default settings with the same weights (cells and nuclei), in the same process.

  python benchmarks/bench_segmentation.py [--synthetic 24] [--data ../shared/data]

Prints markdown tables for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--synthetic", type=int, default=24, help="synthetic fields for AP and speed (default: %(default)s)")
    p.add_argument("--seed", type=int, default=4242, help="synthetic seed, unseen in training (default: %(default)s)")
    p.add_argument("--memory-images", type=int, default=0,
                   help="also segment this many synthetic images into one cache in three resumed legs (to 10%%, "
                        "50%%, 100%%) and report each leg's peak RSS (the issue asks for 1000; default: skip)")
    p.add_argument("--memory-folder", type=Path,
                   help="synthetic images for the memory leg, e.g. from scripts/make_synthetic.py (default: generate "
                        "them into a temporary folder)")
    p.add_argument("--memory-only", action="store_true", help="run only the memory leg")
    p.add_argument("--speed-only", action="store_true", help="skip the AP tables (speed table only)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads; the development VM shares its 2 cores with other jobs (default: %(default)s)")
    return p.parse_args(argv)


class PeakRSS:
    """Samples this process's resident memory every 0.2 s in a thread; `peak()` since the last `reset()`."""

    def __init__(self) -> None:
        import threading

        import psutil

        self._process = psutil.Process()
        self._peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self._peak = max(self._peak, self._process.memory_info().rss)

    def reset(self) -> None:
        self._peak = self._process.memory_info().rss

    def current(self) -> int:
        return self._process.memory_info().rss

    def peak(self) -> int:
        return max(self._peak, self._process.memory_info().rss)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def memory_run(segmenter, n_images: int, seed: int, folder: Path | None = None) -> list[tuple[int, float, float]]:
    """Segment n synthetic images into one cache in three resumed legs (to 10%, 50%, 100% of n).

    Returns (images segmented so far, peak RSS during the leg, RSS at its end), both in MiB. The process keeps
    everything it allocated between legs, so growth with the number of images shows as rising peaks.
    """
    from hpa_cells.synthetic.dataset import SyntheticConfig, write_dataset
    from segmentation.segment_to_cache import SegmentJob, segment_folder

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if folder is None:
            folder = Path(tmp) / "synthetic"
            write_dataset(folder, n_images, SyntheticConfig(seed=seed, size=512), workers=2)
        monitor = PeakRSS()
        done = 0
        for target in (max(1, n_images // 10), max(1, n_images // 2), n_images):
            monitor.reset()
            segment_folder(SegmentJob(folder, Path(tmp) / "cells.h5", limit=target - done), segmenter)
            done = target
            rows.append((done, monitor.peak() / 2**20, monitor.current() / 2**20))
            print(f"leg done: {done} images, peak RSS {rows[-1][1]:.0f} MiB, at the end {rows[-1][2]:.0f} MiB",
                  flush=True)
        monitor.stop()
    return rows


def naive_cellpose_models(segmenter) -> dict:
    """Cellpose's own CellposeModel objects carrying the same weights as `segmenter`'s networks."""
    from naive_cellpose import naive_cellpose_model

    return {"cells": naive_cellpose_model(segmenter._cell_spec), "nuclei": naive_cellpose_model(segmenter._nucleus_spec)}


def naive_segment(naive, image_chw, cell_d, nucleus_d, use_er=True):
    """One image, two CellposeModel.eval calls at default settings (tiling, resample, flow threshold 0.4)."""
    from naive_cellpose import naive_eval

    return (naive_eval(naive["cells"], image_chw, "cells", cell_d, use_er),
            naive_eval(naive["nuclei"], image_chw, "nuclei", nucleus_d))


def quality_and_speed(args: argparse.Namespace, cellpose, watershed) -> None:
    """AP tables (real and synthetic) and the speed table: naive eval loop vs whole `segment` jobs."""
    from hpa_cells.images import read_sample, scan_folder
    from hpa_cells.instance_metrics import average_precision
    from hpa_cells.synthetic.dataset import SyntheticConfig, write_dataset
    from segmentation.cellpose_segmenter import CellposeSegmenter, default_diameters
    from segmentation.segment_to_cache import SegmentJob, segment_folder
    from segmentation.training_data import real_reference_fields, synthetic_fields

    naive = naive_cellpose_models(cellpose)
    cell_d, nucleus_d = default_diameters(512)
    flows = CellposeSegmenter(replace(cellpose.settings, cell_assembly="flows"))
    sets = {}
    if not args.speed_only:
        if (args.data / "hpa2021_subset").is_dir():
            sets["real"] = real_reference_fields(args.data, 512, "cells")
        sets["synthetic"] = synthetic_fields(args.synthetic, args.seed, 512, "cells")
    methods = ("cellpose, nuclei assembly (default)", "cellpose, flows (one pass)", "naive eval", "watershed")
    if sets:
        print("| data | field | " + " | ".join(f"{m} AP@0.5 | AP@0.75" for m in methods) + " |")
        print("|---|---|" + "---|---|" * len(methods))
    for name, fields in sets.items():
        images = [f.image for f in fields]
        truth = [f.mask for f in fields]
        masks = {methods[0]: [r.cells for r in cellpose.segment_batch(images)],
                 methods[1]: [r.cells for r in flows.segment_batch(images)],
                 methods[2]: [naive_segment(naive, im, cell_d, nucleus_d)[0] for im in images],
                 methods[3]: [r.cells for r in watershed.segment_batch(images)]}
        scores = {k: average_precision(truth, v, thresholds=(0.5, 0.75))[0] for k, v in masks.items()}
        rows = [(f.name[:8], i) for i, f in enumerate(fields)] if name == "real" else []
        rows.append(("mean", None))
        for label, i in rows:
            cells = []
            for k in methods:
                a = scores[k] if i is None else scores[k][i:i + 1]
                cells += [f"{np.nanmean(a[:, 0]):.3f}", f"{np.nanmean(a[:, 1]):.3f}"]
            print(f"| {name} | {label} | " + " | ".join(cells) + " |")

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "synthetic"
        write_dataset(folder, args.synthetic, SyntheticConfig(seed=args.seed, size=512))
        images = [read_sample(folder, i) for i in scan_folder(folder).ids]
        t = time.perf_counter()
        for im in images:
            naive_segment(naive, im, cell_d, nucleus_d)
        naive_s = time.perf_counter() - t
        timings = {}
        refined = {"diameter_tolerance": 1.25}
        for label, seg in (
                ("cellpose, nuclei assembly, one pass (default)", cellpose),
                ("cellpose, nuclei assembly, diameter refinement 1.25",
                 CellposeSegmenter(replace(cellpose.settings, **refined))),
                ("cellpose, flows, one pass", flows),
                ("cellpose, flows, diameter refinement 1.25", CellposeSegmenter(replace(flows.settings, **refined))),
                ("watershed", watershed)):
            t = time.perf_counter()
            summary = segment_folder(SegmentJob(folder, Path(tmp) / f"{label}.h5"), seg)
            timings[label] = (time.perf_counter() - t, summary.cells_kept)
    n = len(images)
    print("\n| method | images | seconds | images/s | cells/s | speed-up vs naive loop |")
    print("|---|---|---|---|---|---|")
    print(f"| naive `CellposeModel.eval` loop (segmentation only) | {n} | {naive_s:.1f} | {n / naive_s:.2f} | - | 1.00 |")
    for label, (s, cells) in timings.items():
        print(f"| whole `segment` job, {label} (read, segment, QC, crops, cache) | {n} | {s:.1f} | {n / s:.2f} | "
              f"{cells / s:.1f} | {naive_s / s:.2f} |")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from segmentation.cellpose_segmenter import CellposeSegmenter
    from segmentation.watershed import WatershedSegmenter

    torch.set_num_threads(args.threads)
    cellpose = CellposeSegmenter()
    print(f"# Segmentation benchmark: {datetime.date.today()}, {platform.machine()}, {torch.get_num_threads()} threads, "
          f"python {platform.python_version()}, torch {torch.__version__}")
    print("command: python benchmarks/bench_segmentation.py " + " ".join(sys.argv[1:] if argv is None else argv) + "\n")
    if not args.memory_only:
        quality_and_speed(args, cellpose, WatershedSegmenter())
    if args.memory_images:
        rows = memory_run(cellpose, args.memory_images, args.seed + 1, args.memory_folder)
        print("\n| images segmented (cumulative) | peak RSS during the leg, MiB | RSS at the end of the leg, MiB |")
        print("|---|---|---|")
        for count, peak, end in rows:
            print(f"| {count} | {peak:.0f} | {end:.0f} |")
        print(f"\npeak RSS growth from the first {rows[0][0]} to all {rows[-1][0]} images: "
              f"{rows[-1][1] - rows[0][1]:+.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
