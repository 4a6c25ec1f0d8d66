"""How synthetic fields differ from real HPA fields: intensity, background, cells, areas, texture (issue 13).

Sources, all at the 2018 scale (512 px fields, cells about 25-40 px across):
- real 2018: the 58 fields of `hpa2018_real58`, segmented with the bundled Cellpose segmenter (default
  settings; masks cached in `--work`, so a rerun only reads them);
- real 2021: the `hpa2021_subset` fields shrunk 4x (area interpolation; 2048 -> 512, 3072 -> 768) with
  their reference cell masks (HPA-Cell-Segmentation) shrunk by nearest neighbour; nuclei are the Cellpose
  segmenter's on the shrunk field, each nucleus pixel given the id of the reference cell it lies in;
- synthetic: `--n` fields per preset (`--presets`, seed `--seed`, 512 px) with their truth masks.

Statistics (hpa_cells/synthetic/realism.py says why these): per-channel 1/50/99 percentiles, background
(median outside cells), cell-interior median, cells per field, median cell and nucleus area, coverage,
green texture (gradient / level inside cells) and the green nucleus / cytoplasm ratio. Each is reduced to
the median over fields (with the 10th-90th percentile range); the "gap" is the mean |log ratio| of the
medians against real 2018 (intensities with a 5 grey-level floor). Writes `--out` (JSON) and prints a
markdown table.

Example: python benchmarks/synthetic_realism.py --work runs/realism --n 40
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
ROWS = (
    "cells",
    "cell_area",
    "nucleus_area",
    "coverage",
    "protein_texture",
    "nucleus_cytoplasm_ratio",
    *(
        f"{c}_{k}"
        for c in ("red", "green", "blue", "yellow")
        for k in ("p1", "p50", "p99", "background", "cell")
    ),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    default_data = Path(os.environ.get("HPA_REAL_DATA", REPO_ROOT.parent / "shared" / "data"))
    parser.add_argument("--data", type=Path, default=default_data, help="real data folder ($HPA_REAL_DATA)")
    parser.add_argument(
        "--work", type=Path, default=REPO_ROOT / "runs" / "realism", help="segmentation cache"
    )
    parser.add_argument("--n", type=int, default=40, help="synthetic fields per preset")
    parser.add_argument("--seed", type=int, default=0, help="synthetic seed")
    parser.add_argument("--presets", default="default,hpa2018", help="comma-separated synthetic presets")
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO_ROOT / "benchmarks" / "results" / "synthetic_realism.json",
        help="JSON",
    )
    return parser


def _cached_segmentation(cache: Path, image: np.ndarray, segmenter: object) -> tuple[np.ndarray, np.ndarray]:
    """(cells, nuclei) of a field, from `cache` (.npz, no pickles) or segmented and stored there."""
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as stored:
            return stored["cells"], stored["nuclei"]
    result = segmenter.segment_batch([image])[0]  # type: ignore[attr-defined]
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_suffix(".partial.npz")
    np.savez_compressed(partial, cells=result.cells.astype(np.int32), nuclei=result.nuclei.astype(np.int32))
    partial.replace(cache)
    return result.cells, result.nuclei


def _segmenter() -> object:
    from segmentation.cellpose_segmenter import CellposeSegmenter

    return CellposeSegmenter()


def real_2018(data: Path, work: Path) -> list[dict[str, float]]:
    """Statistics of the 58 real 2018 fields (Cellpose masks)."""
    from tqdm import tqdm

    from hpa_cells.images import read_sample, scan_folder
    from hpa_cells.synthetic.realism import field_statistics

    folder = data / "hpa2018_real58"
    ids = sorted(scan_folder(folder).complete)
    segmenter = None
    rows = []
    for sample_id in tqdm(ids, desc="real 2018", unit="field"):
        image = read_sample(folder, sample_id)
        cache = work / "cellpose_2018" / f"{sample_id}.npz"
        if segmenter is None and not cache.is_file():
            segmenter = _segmenter()
        cells, nuclei = _cached_segmentation(cache, image, segmenter)
        rows.append(field_statistics(image, cells, nuclei))
    return rows


def real_2021(data: Path, work: Path) -> list[dict[str, float]]:
    """Statistics of the 2021 fields shrunk 4x (reference cell masks, Cellpose nuclei)."""
    from hpa_cells.images import read_label_mask, read_sample, resize_mask, scan_folder
    from hpa_cells.synthetic.realism import field_statistics

    folder = data / "hpa2021_subset"
    rows = []
    segmenter = None
    for sample_id in sorted(scan_folder(folder / "images").complete):
        full = read_sample(folder / "images", sample_id)
        size = max(full.shape[1:]) // 4
        image = read_sample(folder / "images", sample_id, size=size)
        cells = resize_mask(read_label_mask(folder / "masks" / f"{sample_id}_predictedmask.png"), size)
        cache = work / "cellpose_2021_quarter" / f"{sample_id}.npz"
        if segmenter is None and not cache.is_file():
            segmenter = _segmenter()
        _, nuclei = _cached_segmentation(cache, image, segmenter)
        nuclei = np.where(nuclei > 0, cells, 0)
        rows.append(field_statistics(image, cells, nuclei))
    return rows


def synthetic(preset: str, n: int, seed: int) -> tuple[list[dict[str, float]], float]:
    """Statistics of `n` synthetic 512 px fields of a preset (truth masks), and seconds per field."""
    from hpa_cells.synthetic import SyntheticConfig, SyntheticGenerator
    from hpa_cells.synthetic.realism import field_statistics

    generator = SyntheticGenerator(SyntheticConfig.preset(preset, seed=seed, size=512))
    rows, seconds = [], 0.0
    for index in range(n):
        started = time.perf_counter()
        sample = generator.generate(index)
        seconds += time.perf_counter() - started
        rows.append(field_statistics(sample.image, sample.cell_mask, sample.nucleus_mask))
    return rows, seconds / n


def _cell(stat: dict[str, float]) -> str:
    digits = 3 if abs(stat["median"]) < 10 else 0
    return f"{stat['median']:.{digits}f} ({stat['p10']:.{digits}f}-{stat['p90']:.{digits}f})"


def markdown_table(summaries: dict[str, dict[str, dict[str, float]]], gaps: dict[str, float]) -> str:
    """Rows = statistics, columns = sources: median over fields (10th-90th percentile)."""
    names = list(summaries)
    lines = ["| statistic | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for key in ROWS:
        lines.append(f"| {key} | " + " | ".join(_cell(summaries[name][key]) for name in names) + " |")
    lines.append("| **gap to real 2018** | " + " | ".join(f"**{gaps[name]:.3f}**" for name in names) + " |")
    return "\n".join(lines)


def machine() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical cores, load {load:.1f}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sys.path.insert(0, str(REPO_ROOT))
    from hpa_cells.synthetic.realism import log_ratio_gap, summarise

    per_field = {
        "real 2018": real_2018(args.data, args.work),
        "real 2021 /4": real_2021(args.data, args.work),
    }
    seconds_per_field = {}
    for preset in [p for p in args.presets.split(",") if p]:
        name = f"synthetic {preset}"
        per_field[name], seconds_per_field[name] = synthetic(preset, args.n, args.seed)
    summaries = {name: summarise(rows) for name, rows in per_field.items()}
    gaps = {name: log_ratio_gap(s, summaries["real 2018"], ROWS) for name, s in summaries.items()}
    command = "python benchmarks/synthetic_realism.py " + " ".join(sys.argv[1:] if argv is None else argv)
    document = {
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "command": command,
        "fields": {name: len(rows) for name, rows in per_field.items()},
        "generation_seconds_per_field": seconds_per_field,
        "gap_to_real_2018": gaps,
        "summary": summaries,
        "per_field": per_field,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=1, allow_nan=True) + "\n", encoding="utf-8")
    print(f"{command}\n{document['date']}, {document['machine']}")
    print("fields: " + ", ".join(f"{name} {n}" for name, n in document["fields"].items()))
    print("generation s/field: " + ", ".join(f"{k} {v:.2f}" for k, v in seconds_per_field.items()))
    print()
    print(markdown_table(summaries, gaps))
    print(f"\nwritten {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
