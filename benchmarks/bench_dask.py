"""Dask segmentation on CPU (issue 14): the same synthetic fields segmented into a cache by one single-thread
process, then by `--scheduler local:N` (N single-thread worker processes), in the same run; fields/s and the ratio
(target >= 1.7x with 2 workers on 2 cores), each phase's time, and whether the two caches are identical dataset for
dataset (time stamps aside).

Both sides use what `segment.py` uses by default (the bundled Cellpose models, --working-size auto, 128 px crops),
built through `hpa_cells_cli.segment.build_segmenter`, on the CPU with one torch thread per process. The machine's
load average is printed before and after: on a shared machine other jobs take cores from the workers.

  python benchmarks/bench_dask.py [--fields 32] [--workers 2] [--size 512] [--keep DIR]

Prints a markdown table for BENCHMARKS.md ("Scale: Dask segmentation on CPU").
"""

from __future__ import annotations

import argparse
import datetime
import functools
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fields", type=int, default=32, help="synthetic fields (default: %(default)s)")
    p.add_argument("--size", type=int, default=512, help="field size in px (default: %(default)s)")
    p.add_argument("--workers", type=int, default=2, help="Dask worker processes, local:N (default: %(default)s)")
    p.add_argument("--seed", type=int, default=1414, help="synthetic seed (default: %(default)s)")
    p.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary folder)")
    return p.parse_args(argv)


def segment_options(images: Path, out: Path) -> argparse.Namespace:
    """segment.py's options with their defaults (Cellpose, bundled models, auto working size), on the CPU."""
    from hpa_cells_cli.segment import build_parser

    return build_parser().parse_args(["--images", str(images), "--out", str(out), "--device", "cpu"])


def single_process(images: Path, out: Path) -> tuple[float, float, float, int, int]:
    """(seconds building the segmenter, seconds segmenting, CPU seconds segmenting, fields segmented, cells) for one
    process on one torch thread."""
    import torch

    from hpa_cells_cli.segment import build_segmenter, segment_job
    from segmentation.segment_to_cache import segment_folder

    torch.set_num_threads(1)
    args = segment_options(images, out)
    started = time.perf_counter()
    segmenter = build_segmenter(args)
    built, cpu_started = time.perf_counter(), time.process_time()
    summary = segment_folder(segment_job(args), segmenter)
    return (built - started, time.perf_counter() - built, time.process_time() - cpu_started, summary.images_done,
            summary.cells_kept)


def dask_workers(images: Path, out: Path, workers: int):
    """The distributed run's summary (its clock starts before the cluster does)."""
    from hpa_cells_cli.segment import build_segmenter, segment_job
    from segmentation.distributed import DistributedOptions, SchedulerSpec, segment_distributed

    args = segment_options(images, out)
    options = DistributedOptions(SchedulerSpec.parse(f"local:{workers}"))
    return segment_distributed(segment_job(args), functools.partial(build_segmenter, args), options)


def identical(a: Path, b: Path) -> bool:
    """Every dataset equal, every root attribute but the time stamps equal."""
    import h5py
    import numpy as np

    with h5py.File(a, "r") as f, h5py.File(b, "r") as g:
        names: list[str] = []
        f.visititems(lambda name, item: names.append(name) if isinstance(item, h5py.Dataset) else None)
        for name in names:
            if name not in g or f[name].shape != g[name].shape or not np.array_equal(f[name][()], g[name][()]):
                print(f"  differs: {name}")
                return False
        untimed = {k: v for k, v in f.attrs.items() if k not in ("created", "modified")}
        return untimed == {k: v for k, v in g.attrs.items() if k not in ("created", "modified")}


def main(argv: list[str] | None = None) -> int:
    # One thread for every math library here too (the workers of local:N get the same), before numpy loads.
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(name, "1")
    args = parse_args(argv)
    from hpa_cells.synthetic.dataset import SyntheticConfig, write_dataset

    work = args.keep or Path(tempfile.mkdtemp(prefix="bench_dask_"))
    images = work / "images"
    write_dataset(images, args.fields, SyntheticConfig(seed=args.seed, size=args.size))
    load_before = os.getloadavg()
    build_s, segment_s, single_cpu_s, single_fields, single_cells = single_process(images, work / "single.h5")
    single_s = build_s + segment_s
    report = dask_workers(images, work / "dask.h5", args.workers)
    load_after = os.getloadavg()
    dask_s = report.run.seconds
    steady_s = report.segment_seconds
    same = identical(work / "single.h5", work / "dask.h5")
    merge_s = report.merge.seconds if report.merge else 0.0
    print(f"\n{datetime.date.today()}, {platform.node()}, {os.cpu_count()} CPUs, load average (1/5/15 min) before "
          f"{'/'.join(f'{v:.2f}' for v in load_before)}, after {'/'.join(f'{v:.2f}' for v in load_after)}")
    print(f"{args.fields} synthetic {args.size} px fields, Cellpose (bundled, segment.py defaults), cpu\n")
    print("| run | fields | cells | wall s | fields/s | vs one process |")
    print("|---|---|---|---|---|---|")
    print(f"| one process, 1 torch thread, whole run (models {build_s:.1f} s + segmenting {segment_s:.1f} s) | "
          f"{single_fields} | {single_cells} | {single_s:.1f} | {single_fields / single_s:.2f} | 1.00x |")
    print(f"| Dask local:{args.workers}, whole run (start-up {report.startup_seconds:.1f} s + segmenting "
          f"{steady_s:.1f} s + merge {merge_s:.1f} s) | {report.run.images_done} | {report.run.cells_kept} | "
          f"{dask_s:.1f} | {report.run.images_done / dask_s:.2f} | {single_s / dask_s:.2f}x |")
    print(f"| Dask local:{args.workers}, segmenting only (models loaded, before the merge) | "
          f"{report.run.images_done} | {report.run.cells_kept} | {steady_s:.1f} | "
          f"{report.run.images_done / steady_s:.2f} | {segment_s / steady_s:.2f}x (vs its segmenting "
          f"{single_fields / segment_s:.2f} fields/s) |")
    print(f"\nCPU time per field while segmenting: one process {single_cpu_s / max(single_fields, 1):.2f} s, Dask "
          f"workers {report.worker_cpu_seconds / max(report.run.images_done, 1):.2f} s (all threads of the process)")
    print(f"caches identical dataset for dataset (time stamps aside): {'yes' if same else 'NO'}; "
          f"{report.chunks} chunks; " + "; ".join(sorted(set(report.devices.values()))))
    if args.keep is None:
        shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
