"""Prediction speed on one device: the bundled MIL model over a cell cache, fields/s (issue 14's number), with the
GPU's utilisation.

    python benchmarks/gpu/bench_gpu_prediction.py --cache CELLS.h5 --device cuda [--model FOLDER]
        [--batch-size N] [--cell-budget N] --json OUT.json

`mil.inference.predict_cache` (what scripts/predict.py runs), with the device's default batching
(`mil.inference.prediction_batching`: on a GPU 256 images up to 4,096 cells per pass, bf16 where supported) unless
given; a warm-up pass over the first 8 fields runs first, outside the timing.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_monitor import GpuMonitor  # noqa: E402  (this folder, after the path is set)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", type=Path, required=True)
    p.add_argument("--device", default="auto")
    p.add_argument("--model", type=Path, help="model folder (default: the bundled model)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--cell-budget", type=int)
    p.add_argument("--json", type=Path, required=True)
    args = p.parse_args(argv)
    from hpa_cells.devices import describe_device, resolve_device
    from hpa_cells_cli.predict import BUNDLED_MODEL_DIR
    from mil.inference import (
        bags_from_cache,
        model_exclude_flags,
        predict_bags,
        predict_cache,
        prediction_batching,
    )
    from mil.model_folder import load_model

    device = resolve_device(args.device)
    loaded = load_model(args.model or BUNDLED_MODEL_DIR, device=device)
    options = {"batch_size": args.batch_size, "cell_budget": args.cell_budget}
    warm = itertools.islice(bags_from_cache(args.cache, model_exclude_flags(loaded)), 8)
    predict_bags(loaded, warm, device=device, **options)
    with GpuMonitor(device) as monitor:
        started = time.perf_counter()
        predictions = predict_cache(loaded, args.cache, device=device, show_progress=False, **options)
        seconds = time.perf_counter() - started
    fields, cells = len(predictions.image_ids), len(predictions.cells)
    result = {"device": describe_device(device),
              "batching": prediction_batching(device, args.batch_size, args.cell_budget).to_dict(),
              "fields": fields, "cells": cells, "seconds": round(seconds, 2),
              "fields_per_second": round(fields / seconds, 2), "cells_per_second": round(cells / seconds, 1),
              **monitor.summary()}
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
