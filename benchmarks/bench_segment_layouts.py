"""Segmentation speed on real fields of both layouts beside synthetic fields (issue 13's speed target).

The whole `segment.py` job as a user runs it (`hpa_cells_cli.segment.main` with its defaults: working size auto,
the bundled Cellpose models, cells grown from nuclei, QC, crops, the HDF5 cache), one folder after another in
the same process, each into a fresh cache:

- 16 real 2018 fields (`hpa2018_real58`, 512 px 8-bit PNG; the first 16 ids);
- the 5 real 2021 fields (`hpa2021_subset`, 16-bit PNG at 2048 / 3072 px: segmented at 512 / 768 px);
- 16 synthetic 512 px fields with the default appearance, and 16 with the `hpa2018` preset (seed 0).

A warm-up job (2 synthetic fields) loads the models first. Each folder is run `--repeats` times in turn (ABCD ABCD),
and the best time per folder is kept, so that load from other processes disturbs the ratios less.

    python benchmarks/bench_segment_layouts.py [--data ../shared/data] [--repeats 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path(os.environ.get("HPA_REAL_DATA", REPO.parent / "shared" / "data")))
    p.add_argument("--fields", type=int, default=16, help="real 2018 and synthetic fields per folder (default: 16)")
    p.add_argument("--repeats", type=int, default=2, help="rounds over the folders; the best per folder is kept")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    p.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results" / "segment_layouts.json")
    return p.parse_args(argv)


def link_fields(source: Path, folder: Path, limit: int | None = None) -> Path:
    """`folder` holding symbolic links to the channel files of the first `limit` complete fields of `source`
    (`hpa_cells.images.scan_folder`: the same discovery as `segment.py`)."""
    from hpa_cells.images import scan_folder

    folder.mkdir(parents=True)
    for files in list(scan_folder(source).complete.values())[:limit]:
        for path in files.values():
            (folder / path.name).symlink_to(path.resolve())
    return folder


def make_folders(args: argparse.Namespace, root: Path) -> dict[str, Path]:
    """The four input folders (and a warm-up one), real fields linked, synthetic ones generated."""
    from hpa_cells.synthetic.dataset import SyntheticConfig, write_dataset

    real2018 = args.data / "hpa2018_real58"
    real2021 = args.data / "hpa2021_subset" / "images"
    for folder in (real2018, real2021):
        if not folder.is_dir():
            sys.exit(f"real fields not found: {folder} (set --data or HPA_REAL_DATA)")
    folders = {"real 2018 (512 px PNG)": link_fields(real2018, root / "r2018", args.fields),
               "real 2021 (2048/3072 px 16-bit PNG)": link_fields(real2021, root / "r2021")}
    for name, preset in (("synthetic 512 px (default)", "default"), ("synthetic 512 px (hpa2018 preset)", "hpa2018")):
        folder = root / f"synthetic_{preset}"
        write_dataset(folder, args.fields, SyntheticConfig.preset(preset, seed=0, size=512), show_progress=False)
        folders[name] = folder
    write_dataset(root / "warmup", 2, SyntheticConfig(seed=99, size=512), show_progress=False)
    return folders


def segment_once(images: Path, cache: Path) -> dict:
    """One `segment.py --images images --out cache` run (defaults); wall time, fields, cells, working sizes."""
    from hpa_cells.cache import CellCache
    from hpa_cells_cli import segment

    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        code = segment.main(["--images", str(images), "--out", str(cache)])
    seconds = time.perf_counter() - started
    if code != 0:
        raise RuntimeError(f"segment.py failed on {images} (exit {code}):\n{printed.getvalue()}")
    with CellCache(cache) as cells:
        n_fields, n_cells = len(cells.image_ids), len(cells)
    sizes = [line for line in printed.getvalue().splitlines() if line.strip().startswith("working size")]
    return {"seconds": seconds, "fields": n_fields, "cells": n_cells, "working_size": sizes[0].strip() if sizes else ""}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folders = make_folders(args, root)
        segment_once(root / "warmup", root / "warmup.h5")
        runs: dict[str, list[dict]] = {name: [] for name in folders}
        for round_index in range(args.repeats):
            for index, (name, folder) in enumerate(folders.items()):
                result = segment_once(folder, root / f"cache_{round_index}_{index}.h5")
                runs[name].append(result)
                print(f"round {round_index + 1}: {name}: {result['fields']} fields, {result['cells']} cells in "
                      f"{result['seconds']:.1f} s", flush=True)
    best = {name: min(results, key=lambda r: r["seconds"]) for name, results in runs.items()}
    baseline = best["real 2018 (512 px PNG)"]["fields"] / best["real 2018 (512 px PNG)"]["seconds"]
    print(f"\nmachine: {platform.node()}, {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} thread(s); "
          f"load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}")
    print("\n| folder | fields | cells | best seconds | fields/s | cells/s | ratio to real 2018 | working size |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in best.items():
        rate = r["fields"] / r["seconds"]
        print(f"| {name} | {r['fields']} | {r['cells']} | {r['seconds']:.1f} | {rate:.2f} | {r['cells'] / r['seconds']:.1f} "
              f"| {rate / baseline:.2f} | {r['working_size'].removeprefix('working size: ')} |")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps({
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.node(),
        "cores": os.cpu_count(), "threads": args.threads, "load_before": load_before, "load_after": os.getloadavg(),
        "runs": runs}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
