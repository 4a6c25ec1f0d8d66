"""MIL training speed on one device: training cells/s of the attention MIL, resnet10t at 64 px (issue 14's number),
with the GPU's utilisation.

    python benchmarks/gpu/bench_gpu_training.py --cache CELLS.h5 --out WORK --device cuda [--epochs 2]
        [--batch-size 64] [--max-cells 8] [--workers 6] --json OUT.json

`mil.training.train_model` (what scripts/train.py runs) on the cache for --epochs epochs from scratch, the model
folder in WORK; cells/s is the loop's own `train_cells_per_second` (training cells over training time, validation
excluded). The precision is the training default ("auto": bf16 on GPUs that have it, where the training code
supports it).
"""

from __future__ import annotations

import argparse
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
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--device", default="auto")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64, help="bags per step (default: %(default)s)")
    p.add_argument("--max-cells", type=int, default=8, help="cells drawn per bag (default: %(default)s)")
    p.add_argument("--workers", type=int, default=6, help="DataLoader workers (default: %(default)s)")
    p.add_argument("--json", type=Path, required=True)
    args = p.parse_args(argv)
    import logging

    from hpa_cells.devices import describe_device, resolve_device
    from mil.config import MILConfig
    from mil.training import TrainConfig, train_model

    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the loop's per-epoch lines go to the log
    device = resolve_device(args.device)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, max_cells=args.max_cells,
                         num_workers=args.workers, device=device, seed=7, patience=args.epochs + 1)
    folder = args.out / f"model_{device.replace(':', '')}"
    with GpuMonitor(device) as monitor:
        started = time.perf_counter()
        metrics = train_model(args.cache, folder, MILConfig(encoder="resnet10t", input_size=64), config,
                              overwrite=True)
        seconds = time.perf_counter() - started
    keep = ("train_cells_per_second", "train_images_per_second", "train_seconds_this_run", "epochs_run",
            "n_train_images", "n_val_images", "val_macro_f1", "val_loss", "trained_on")
    result = {"device": describe_device(device), "command_seconds": round(seconds, 1),
              "settings": {"epochs": args.epochs, "batch_size": args.batch_size, "max_cells": args.max_cells,
                           "workers": args.workers, "encoder": "resnet10t", "input_size": 64},
              **{k: metrics[k] for k in keep if k in metrics}, **monitor.summary()}
    args.json.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
