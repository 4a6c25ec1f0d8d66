"""Segmentation speed on one device: fields/s at 512 px into the cell cache (issue 14's GPU number), with the GPU's
utilisation, and the segmenter alone.

    python benchmarks/gpu/bench_gpu_segmentation.py --images DIR --out WORK --device cuda [--workers 15]
        [--batch-size 64] [--network-batch-size 32] [--limit N] [--stream-fields 256] --json OUT.json

1. job: the whole `segment` job (`segmentation.segment_to_cache.segment_folder`, what `segment --postprocess-workers
   --network-batch-size` runs: read, segment, QC, crops, the HDF5 cache) over the fields of --images (at most
   --limit) into a fresh cache, with the bundled Cellpose models on --device, the CPU stages in --workers
   processes, batches of --batch-size fields streamed through `segment_stream` (reading ahead, the network passes,
   the workers and the cropping and writing in this process overlap) and at most --network-batch-size per network
   pass: the real job's fields/s;
2. segmenter: `CellposeSegmenter.segment_stream` over fields already in memory (no reading, cropping or writing), in
   batches of --batch-size: what the job would reach if the cache side kept up.
A warm-up batch (worker start, cuDNN and numba set-up) runs first, outside both timings.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_monitor import GpuMonitor  # noqa: E402  (this folder, after the path is set)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=Path, required=True, help="folder of fields to segment")
    p.add_argument("--out", type=Path, required=True, help="work folder (the cache is made here)")
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                   help="post-processing worker processes (default: all cores but one)")
    p.add_argument("--batch-size", type=int, default=64, help="fields per batch read and segmented (default: 64)")
    p.add_argument("--network-batch-size", type=int, default=32, help="fields per network pass (default: 32)")
    p.add_argument("--limit", type=int, help="segment at most this many fields")
    p.add_argument("--stream-fields", type=int, default=256, help="fields of the segmenter-alone run (0: skip)")
    p.add_argument("--json", type=Path, required=True)
    return p.parse_args(argv)


def segment_job(args: argparse.Namespace, segmenter, device: str) -> dict:
    """The whole segment job into a fresh cache, timed, with the GPU sampled."""
    from segmentation.segment_to_cache import SegmentJob, segment_folder

    cache = args.out / f"segmented_{device.replace(':', '')}.h5"
    cache.unlink(missing_ok=True)
    job = SegmentJob(images_dir=args.images, out_path=cache, working_size=512, batch_size=args.batch_size,
                     limit=args.limit)
    with GpuMonitor(device) as monitor:
        started = time.perf_counter()
        summary = segment_folder(job, segmenter)
        seconds = time.perf_counter() - started
    fields = summary.images_done
    return {"fields": fields, "cells": summary.cells_kept, "skipped": len(summary.skipped),
            "seconds": round(seconds, 2), "fields_per_second": round(fields / seconds, 2),
            "cells_per_second": round(summary.cells_kept / seconds, 1), **monitor.summary()}


def segment_in_memory(args: argparse.Namespace, segmenter, images: list, device: str) -> dict:
    """`segment_stream` over `--stream-fields` fields (the distinct ones repeated), timed."""
    total = args.stream_fields
    fields = [images[i % len(images)] for i in range(total)]
    batches = [fields[i:i + args.batch_size] for i in range(0, total, args.batch_size)]
    with GpuMonitor(device) as monitor:
        started = time.perf_counter()
        cells = sum(r.n_cells for batch in segmenter.segment_stream(batches) for r in batch)
        seconds = time.perf_counter() - started
    return {"fields": total, "cells": cells, "seconds": round(seconds, 2),
            "fields_per_second": round(total / seconds, 2), **monitor.summary()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from hpa_cells.devices import describe_device, resolve_device
    from hpa_cells.images import read_sample, scan_folder
    from segmentation.cellpose_segmenter import CellposeSegmenter, CellposeSettings

    device = resolve_device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    ids = sorted(scan_folder(args.images).complete)
    images = [read_sample(args.images, i) for i in ids[:64]]  # prepare_data's c0-* copies: distinct fields
    segmenter = CellposeSegmenter(CellposeSettings(device=device), postprocess_workers=args.workers,
                                  network_batch_size=args.network_batch_size)
    with segmenter:
        started = time.perf_counter()
        segmenter.start_workers()  # every worker started and its flow dynamics loaded
        segmenter.segment_batch(images[:2])  # warm-up: cuDNN, the networks
        warm_up = time.perf_counter() - started
        result = {"device": describe_device(device), "warm_up_seconds": round(warm_up, 1),
                  "settings": {"workers": args.workers, "batch_size": args.batch_size,
                               "network_batch_size": args.network_batch_size, "working_size": 512,
                               "fields_in_folder": len(ids), "cpu_count": os.cpu_count()},
                  "job": segment_job(args, segmenter, device)}
        if args.stream_fields > 0:
            result["segmenter_only"] = segment_in_memory(args, segmenter, images, device)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
