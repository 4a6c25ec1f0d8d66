"""Dask segmentation on CPU (issue 14): the same synthetic fields segmented into a cache by one single-thread
process, then by `--scheduler local:N` (N single-thread worker processes), in the same run; fields/s and the ratio
(target >= 1.7x with 2 workers on 2 cores), each phase's time, CPU time per field, and whether the caches are
identical dataset for dataset (time stamps aside).

Twice: cold (everything a short run pays: starting the cluster, importing and building the segmenter in every
worker process, Cellpose's post-processing compiled by numba on its first call, about 7 s of CPU per process), and
warm (the processes segmented a few other fields first: the steady state of a long run, what matters for 30,000
fields).

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


def single_process(images: Path, out: Path, segmenter=None) -> tuple[float, float, float, int, int]:
    """(seconds building the segmenter, seconds segmenting, CPU seconds segmenting, fields segmented, cells) for one
    process on one torch thread; `segmenter` reuses one already built (warm)."""
    import torch

    from hpa_cells_cli.segment import build_segmenter, segment_job
    from segmentation.segment_to_cache import segment_folder

    torch.set_num_threads(1)
    args = segment_options(images, out)
    started = time.perf_counter()
    segmenter = segmenter or build_segmenter(args)
    built, cpu_started = time.perf_counter(), time.process_time()
    summary = segment_folder(segment_job(args), segmenter)
    return (built - started, time.perf_counter() - built, time.process_time() - cpu_started, summary.images_done,
            summary.cells_kept)


def dask_workers(images: Path, out: Path, scheduler: str):
    """The distributed run's summary (its clock starts before it connects, or starts the local cluster)."""
    from hpa_cells_cli.segment import build_segmenter, segment_job
    from segmentation.distributed import DistributedOptions, SchedulerSpec, segment_distributed

    args = segment_options(images, out)
    options = DistributedOptions(SchedulerSpec.parse(scheduler))
    return segment_distributed(segment_job(args), functools.partial(build_segmenter, args), options)


def warm_dask(images: Path, warm_up: Path, work: Path, workers: int):
    """The run's summary on a cluster like local:N whose workers segmented `warm_up` first (models loaded, first-call
    compilation done): the steady state of a long run."""
    from segmentation.distributed import start_local_cluster

    with start_local_cluster(workers) as cluster:
        dask_workers(warm_up, work / "warm_up_dask.h5", cluster.scheduler_address)
        return dask_workers(images, work / "dask_warm.h5", cluster.scheduler_address)


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


def row(name: str, fields: int, cells: int, wall_s: float, baseline_s: float | None) -> str:
    ratio = f"{baseline_s / wall_s:.2f}x" if baseline_s else "1.00x"
    return f"| {name} | {fields} | {cells} | {wall_s:.1f} | {fields / wall_s:.2f} | {ratio} |"


def main(argv: list[str] | None = None) -> int:
    # One thread for every math library here too (the workers of local:N get the same), before numpy loads.
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(name, "1")
    args = parse_args(argv)
    from hpa_cells.synthetic.dataset import SyntheticConfig, write_dataset
    from hpa_cells_cli.segment import build_segmenter

    work = args.keep or Path(tempfile.mkdtemp(prefix="bench_dask_"))
    images, warm_up = work / "images", work / "warm_up"
    write_dataset(images, args.fields, SyntheticConfig(seed=args.seed, size=args.size))
    write_dataset(warm_up, 2 * args.workers, SyntheticConfig(seed=args.seed + 1, size=args.size))
    load_before = os.getloadavg()
    cold = single_process(images, work / "single.h5")
    cold_dask = dask_workers(images, work / "dask.h5", f"local:{args.workers}")
    segmenter = build_segmenter(segment_options(images, work / "unused.h5"))
    single_process(warm_up, work / "warm_up_single.h5", segmenter)
    warm = single_process(images, work / "single_warm.h5", segmenter)
    warm_dask_report = warm_dask(images, warm_up, work, args.workers)
    load_after = os.getloadavg()
    same = all(identical(work / "single.h5", work / name) for name in ("dask.h5", "single_warm.h5", "dask_warm.h5"))
    print(f"\n{datetime.date.today()}, {platform.node()}, {os.cpu_count()} CPUs, load average (1/5/15 min) before "
          f"{'/'.join(f'{v:.2f}' for v in load_before)}, after {'/'.join(f'{v:.2f}' for v in load_after)}")
    print(f"{args.fields} synthetic {args.size} px fields, Cellpose (bundled, segment.py defaults), cpu, "
          f"{args.workers} workers\n")
    print("| run | fields | cells | wall s | fields/s | vs one process |")
    print("|---|---|---|---|---|---|")
    cpu_lines = []
    for (label, report), (single_label, single) in (
            (("Dask local:N, cold", cold_dask), ("one process, cold", cold)),
            (("Dask N workers, warm", warm_dask_report), ("one process, warm", warm))):
        single_s = single[0] + single[1]
        print(row(f"{single_label} (models {single[0]:.1f} s + segmenting {single[1]:.1f} s)", single[3], single[4],
                  single_s, None))
        merge_s = report.merge.seconds if report.merge else 0.0
        print(row(f"{label} (start-up {report.startup_seconds:.1f} s + segmenting {report.segment_seconds:.1f} s "
                  f"+ merge {merge_s:.1f} s)", report.run.images_done, report.run.cells_kept, report.run.seconds,
                  single_s))
        cpu_lines.append(f"CPU time per field while segmenting, {single_label.split(',')[1].strip()}: one process "
                         f"{single[2] / max(single[3], 1):.2f} s, workers "
                         f"{report.worker_cpu_seconds / max(report.run.images_done, 1):.2f} s (all threads); cores "
                         f"used: one process {single[2] / single[1]:.2f}, workers together "
                         f"{report.worker_cpu_seconds / max(report.segment_seconds, 1e-9):.2f}")
    print("\n" + "\n".join(cpu_lines))
    print(f"caches identical dataset for dataset (time stamps aside): {'yes' if same else 'NO'}; "
          f"{cold_dask.chunks} chunks; " + "; ".join(sorted(set(cold_dask.devices.values()))))
    if args.keep is None:
        shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
