"""Multi-process training (torch DDP) against one process, on one small synthetic cell cache (issue 14).

    python benchmarks/bench_ddp.py [--out runs/bench_ddp] [--processes 1 2] [--threads 1] [--fields 64]
                                   [--epochs 4] [--device cpu] [--quick] [--json results.json]

The cache: `--fields` synthetic fields (balanced labels, `--field-size` px) cut into cells along their TRUE masks
(`segment.py --segmenter masks`: no Cellpose, so the cache is quick to make), made once in --out and reused. Each
entry of `--processes` trains the same model on it with the same seed: 1 is plain `scripts/train.py`, N > 1 is
`torchrun --nproc-per-node N scripts/train.py` (gloo on the CPU, NCCL on GPUs), every process on `--threads`
torch threads. The table and the JSON give, per run: training cells/s (all processes' training cells over the
training time; validation excluded), the whole command's seconds (start-up and validation included), and the
final validation numbers (loss, macro F1 with fitted thresholds and at 0.5, best epoch); and the speed-up of each
run over the first. `--batch-size` is per process (DDP), so N processes take N x fewer, N x larger steps per
epoch: their validation numbers differ from one process's for that reason, not from a fault.

On a GPU machine (`--device cuda`, e.g. for benchmarks/gpu/): the same script, with larger batches by default;
`--quick` makes a smaller cache and fewer epochs. `uptime`'s load average is recorded before and after (this
benchmark is meant for shared machines: read the numbers against it).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PRESETS = {  # (fields, field size, epochs, batch size, max cells, workers)
    ("cpu", False): (64, 512, 4, 8, 8, 0),
    ("cpu", True): (24, 256, 2, 8, 8, 0),
    ("cuda", False): (400, 512, 4, 32, 16, 6),
    ("cuda", True): (160, 512, 2, 32, 16, 6),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "runs" / "bench_ddp", help="work folder (cache, model folders)")
    p.add_argument("--processes", type=int, nargs="+", default=None,
                   help="one run per entry: 1 = plain train.py, N = torchrun with N processes (default: 1 2 on the "
                        "CPU, 1 per visible GPU count on CUDA)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: %(default)s)")
    p.add_argument("--precision", default="auto", help="train.py --precision (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="a smaller cache and fewer epochs (a check, not a number)")
    p.add_argument("--fields", type=int, help="synthetic fields in the cache (default: by device and --quick)")
    p.add_argument("--field-size", type=int, help="synthetic field size in px")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="bags per step per process")
    p.add_argument("--max-cells", type=int, help="cells drawn per training bag")
    p.add_argument("--workers", type=int, help="DataLoader workers per process")
    p.add_argument("--encoder", default="resnet10t", help="(default: %(default)s)")
    p.add_argument("--input-size", type=int, default=64, help="crop input size (default: %(default)s)")
    p.add_argument("--seed", type=int, default=7, help="data, split and training seed (default: %(default)s)")
    p.add_argument("--json", type=Path, help="write the results here as JSON")
    args = p.parse_args(argv)
    kind = "cuda" if args.device.startswith("cuda") or (args.device == "auto" and _gpus() > 0) else "cpu"
    preset = dict(zip(("fields", "field_size", "epochs", "batch_size", "max_cells", "workers"),
                      PRESETS[(kind, args.quick)], strict=True))
    for name, value in preset.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.processes is None:
        args.processes = [1, 2] if kind == "cpu" else sorted({1, max(1, _gpus())})
    return args


def _gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def load_average() -> list[float]:
    """`uptime`'s 1, 5 and 15 minute load averages."""
    return [round(v, 2) for v in os.getloadavg()]


def build_cache(args: argparse.Namespace) -> Path:
    """The synthetic fields and their true-mask cell cache, made once per settings."""
    from hpa_cells.synthetic.dataset import SyntheticConfig, write_dataset
    from segmentation.mask_folder import MaskFolderSegmenter
    from segmentation.segment_to_cache import SegmentJob, segment_folder

    name = f"synthetic_{args.fields}x{args.field_size}_seed{args.seed}"
    folder, cache = args.out / name, args.out / f"{name}.h5"
    if cache.is_file():
        return cache
    write_dataset(folder, args.fields, SyntheticConfig(seed=args.seed, size=args.field_size, balanced=True))
    job = SegmentJob(images_dir=folder, out_path=cache, labels_path=folder / "train.csv",
                     working_size=args.field_size)
    summary = segment_folder(job, MaskFolderSegmenter(folder))
    print(f"{cache.name}: " + "; ".join(summary.lines()[:2]), flush=True)
    return cache


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def train_command(args: argparse.Namespace, processes: int, cache: Path, out: Path) -> list[str]:
    """The command of one run: plain train.py for 1 process, torchrun for more."""
    train = [str(REPO / "scripts" / "train.py"), "--cache", str(cache), "--out", str(out), "--encoder", args.encoder,
             "--input-size", str(args.input_size), "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
             "--max-cells", str(args.max_cells), "--seed", str(args.seed), "--workers", str(args.workers),
             "--device", args.device, "--precision", args.precision, "--patience", str(args.epochs + 1)]
    if processes == 1:
        return [sys.executable, *train]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes), "--master-addr",
            "127.0.0.1", "--master-port", str(_free_port()), *train]


def run_once(args: argparse.Namespace, processes: int, cache: Path) -> dict:
    """Train with `processes` processes into a fresh folder; its numbers."""
    out = args.out / f"model_{processes}p"
    shutil.rmtree(out, ignore_errors=True)
    command = train_command(args, processes, cache, out)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    started = time.time()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.time() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    return {"processes": processes, "command": " ".join(command[1:]).replace(str(REPO) + "/", ""),
            "command_seconds": round(seconds, 1), "train_seconds": metrics["train_seconds_this_run"],
            "train_cells_per_second": metrics["train_cells_per_second"],
            "train_images_per_second": metrics["train_images_per_second"],
            "val_loss": round(metrics["val_loss"], 5), "val_macro_f1": round(metrics["val_macro_f1"], 4),
            "val_macro_f1_at_0.5": round(metrics["val_macro_f1_at_0.5"], 4), "best_epoch": metrics["best_epoch"],
            "epochs_run": metrics["epochs_run"], "trained_on": metrics["trained_on"],
            "n_train_images": metrics["n_train_images"], "n_val_images": metrics["n_val_images"]}


def print_table(results: dict) -> None:
    print("\n| processes | train cells/s | speed-up | train s | command s | val loss | val macro F1 (fitted) "
          "| val macro F1 @0.5 | best epoch |")
    print("|---|---|---|---|---|---|---|---|---|")
    for run in results["runs"]:
        print(f"| {run['processes']} | {run['train_cells_per_second']} | {run['speed_up']:.2f}x | "
              f"{run['train_seconds']} | {run['command_seconds']} | {run['val_loss']:.4f} | {run['val_macro_f1']:.3f} | "
              f"{run['val_macro_f1_at_0.5']:.3f} | {run['best_epoch']} of {run['epochs_run']} |")
    print(f"\nload average (1/5/15 min) before {results['load_before']}, after {results['load_after']}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    load_before = load_average()
    started = time.time()
    cache = build_cache(args)
    runs = []
    for processes in args.processes:
        print(f"training with {processes} process(es) ...", flush=True)
        runs.append(run_once(args, processes, cache))
    first = runs[0]["train_cells_per_second"] or 0.0
    for run in runs:
        run["speed_up"] = (run["train_cells_per_second"] or 0.0) / first if first else 0.0
    results = {"benchmark": "bench_ddp", "date": datetime.date.today().isoformat(), "machine": platform.node(),
               "platform": platform.platform(), "cpu_count": os.cpu_count(), "device": args.device,
               "quick": args.quick, "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "cache": str(cache), "load_before": load_before, "load_after": load_average(),
               "total_seconds": round(time.time() - started, 1), "runs": runs}
    print_table(results)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")
        print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
