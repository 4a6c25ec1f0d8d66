"""The end-to-end demo on built-in data: no downloads, a few minutes on a laptop CPU.

  1. generate a small synthetic HPA-like set with per-cell truth      -> demo_output/synthetic/
  2. read it back (the four channels of every sample, the labels)
  3. segment it and cache every cell in HDF5                          -> demo_output/cells.h5
  4. train the attention-MIL model briefly, from image labels only    -> demo_output/model/
  5. predict image labels and per-cell localization                   -> demo_output/predictions/
  6. evaluate: image macro F1, and cell-level mAP against the truth

Rerunning resumes finished steps (delete demo_output/ to start over).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "demo_output", help="output folder (default: %(default)s)")
    p.add_argument("--n-images", type=int, default=64, help="synthetic images (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=12, help="MIL training epochs (default: %(default)s)")
    # The demo uses the watershed until the bundled Cellpose models beat it (BENCHMARKS.md, segmentation).
    p.add_argument("--segmenter", choices=("cellpose", "watershed"), default="watershed",
                   help="cellpose = the bundled offline Cellpose models (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    return p.parse_args(argv)


def run_script(name: str, argv: list[str]) -> None:
    """Run another script's `main(argv)` in this process (one torch start-up for the whole demo)."""
    spec = importlib.util.spec_from_file_location(f"hpa_cells_script_{name[:-3]}", REPO / "scripts" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    code = module.main(argv)
    if code:
        raise SystemExit(f"scripts/{name} failed with exit code {code}")


def step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.time()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    from hpa_cells.images import read_sample, scan_folder
    from hpa_cells.labels import read_labels
    from hpa_cells.synthetic.dataset import SyntheticConfig, write_dataset

    out = args.out
    synthetic = out / "synthetic"
    t = step(f"1. synthetic data: {args.n_images} fields of 512 px with per-cell truth -> {synthetic}")
    summary = write_dataset(synthetic, args.n_images, SyntheticConfig(seed=args.seed, size=512, balanced=True),
                            show_progress=True)
    print(f"   {summary.n_images} images ({summary.n_written} new), {summary.n_cells} cells, "
          f"{int(summary.cell_counts.sum())} label-carrying cells ({time.time() - t:.1f} s)")

    t = step("2. read it back")
    scan = scan_folder(synthetic)
    labels = read_labels(synthetic / "train.csv")
    first = read_sample(synthetic, scan.ids[0])
    print(f"   {len(scan.complete)} complete samples, {len(scan.incomplete)} incomplete; {len(labels)} labelled; "
          f"sample {scan.ids[0]}: array {first.shape} {first.dtype} (channels red, green, blue, yellow)")

    cache = out / "cells.h5"
    step(f"3. segment ({args.segmenter}) and cache cells -> {cache}")
    run_script("segment.py", ["--images", str(synthetic), "--labels", str(synthetic / "train.csv"), "--out", str(cache),
                              "--segmenter", args.segmenter])
    model = out / "model"
    step(f"4. train attention MIL ({args.epochs} epochs) -> {model}")
    run_script("train.py", ["--cache", str(cache), "--out", str(model), "--epochs", str(args.epochs),
                            "--seed", str(args.seed)])
    predictions = out / "predictions"
    step(f"5. predict -> {predictions}")
    run_script("predict.py", ["--model", str(model), "--cache", str(cache), "--out", str(predictions)])
    step("6. evaluate against the per-cell truth")
    run_script("evaluate.py", ["--pred", str(predictions), "--labels", str(synthetic / "train.csv"),
                               "--truth", str(synthetic)])
    print(f"\nDemo finished in {time.time() - started:.0f} s. Outputs are in {out}/ (see README.md, 'Outputs').")
    return 0


if __name__ == "__main__":
    sys.exit(main())
