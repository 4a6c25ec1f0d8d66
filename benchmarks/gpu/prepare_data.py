"""The GPU check's data, made with every core: the MIL benchmark's synthetic set and caches, and the segmentation set.

    python benchmarks/gpu/prepare_data.py --work DIR --fields 800 --cpu-cache-fields 64 --seg-distinct 64
                                          --seg-copies 8 [--workers N] --json OUT.json

- DIR/bench_mil/synthetic: `--fields` balanced synthetic 512 px fields of seed 7, exactly the set of
  benchmarks/bench_mil.py (its run in DIR/bench_mil then finds the fields and the cache made and reuses them);
- DIR/bench_mil/cells_truth.h5: their cells cut along the TRUE masks (bench_mil.py's cache);
- DIR/cells_truth_small.h5: the first `--cpu-cache-fields` of them, for the brief CPU runs;
- DIR/segmentation_fields: the first `--seg-distinct` fields' four channel files, each hard-linked `--seg-copies`
  times under new ids (`c{k}-{id}`): as many fields to segment as wanted without generating them all.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

MIL_SEED = 7
FIELD_SIZE = 512
COLOURS = ("red", "green", "blue", "yellow")


def truth_cache(folder: Path, cache: Path, limit: int | None = None) -> dict:
    """The true-mask cell cache of `folder`, as bench_mil.py makes it (same job settings, so it is reused)."""
    from hpa_cells.crops import CropConfig
    from segmentation.mask_folder import MaskFolderSegmenter
    from segmentation.segment_to_cache import SegmentJob, segment_folder

    job = SegmentJob(images_dir=folder, out_path=cache, labels_path=folder / "train.csv", working_size=FIELD_SIZE,
                     crop=CropConfig(), limit=limit)
    summary = segment_folder(job, MaskFolderSegmenter(folder))
    return {"path": str(cache), "fields": summary.images_done + summary.images_already_done,
            "cells": summary.cells_kept, "seconds": round(summary.seconds, 1)}


def link_fields(folder: Path, dest: Path, distinct: int, copies: int) -> dict:
    """`copies` hard links (copies where links fail) of the first `distinct` fields' channel files, new ids."""
    from hpa_cells.images import scan_folder

    ids = sorted(scan_folder(folder).complete)[:distinct]
    if len(ids) < distinct:
        raise SystemExit(f"error: {folder} holds {len(ids)} complete fields, fewer than --seg-distinct {distinct}")
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for copy in range(copies):
        for image_id in ids:
            for colour in COLOURS:
                source = next(folder.glob(f"{image_id}_{colour}.*"))
                target = dest / f"c{copy}-{image_id}_{colour}{source.suffix}"
                try:
                    os.link(source, target)
                except OSError:
                    shutil.copy2(source, target)
    return {"path": str(dest), "fields": distinct * copies, "distinct": distinct}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--fields", type=int, default=800)
    p.add_argument("--cpu-cache-fields", type=int, default=64)
    p.add_argument("--seg-distinct", type=int, default=64)
    p.add_argument("--seg-copies", type=int, default=8)
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    p.add_argument("--json", type=Path, required=True)
    args = p.parse_args(argv)
    from hpa_cells.synthetic.dataset import SyntheticConfig, write_dataset

    folder = args.work / "bench_mil" / "synthetic"
    started = time.perf_counter()
    write_dataset(folder, args.fields, SyntheticConfig(seed=MIL_SEED, size=FIELD_SIZE, balanced=True),
                  workers=args.workers)
    generated = time.perf_counter() - started
    result = {"synthetic": {"path": str(folder), "fields": args.fields, "seconds": round(generated, 1),
                            "workers": args.workers},
              "cells_truth": truth_cache(folder, args.work / "bench_mil" / "cells_truth.h5"),
              "cells_truth_small": truth_cache(folder, args.work / "cells_truth_small.h5", args.cpu_cache_fields),
              "segmentation_fields": link_fields(folder, args.work / "segmentation_fields", args.seg_distinct,
                                                 args.seg_copies)}
    result["seconds"] = round(time.perf_counter() - started, 1)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
