"""Score the leave-one-out (LOO) segmentation folds again, without retraining, with the current inference path.

Each fold model (`WORK/{kind}/loo-{id8}/model.safetensors`, written by `scripts/train_segmenter.py --stages loo`)
was fine-tuned without its held-out real field; this script segments that field at 512 px and scores AP@0.5 /
AP@0.75 against its reference mask (`hpa_cells.instance_metrics.average_precision`), these ways:

  nuclei       the default `CellposeSegmenter` (cell_assembly "nuclei"): cells grown from the nuclei network's
               nuclei over the cell network's outputs (`segmentation.seeded_cells`). The nuclei come from the
               nuclei fold model `WORK/nuclei/loo-{id8}` when it exists (also trained without the field), else
               from the bundled nuclei model, which saw the field's derived nuclei (recorded as "nuclei_model")
  deployed     the cells path with cell_assembly "flows" (Cellpose's flow following): default diameter, per-image
               refinement (diameter_tolerance 1.25); the default before "nuclei" (the name is kept for the records)
  one_pass     the same without refinement (`diameter_tolerance=None`): one pass at the default diameter
  true_diameter  one pass at the field's true median cell diameter (the network's quality without the size guess)
  naive        Cellpose's own `CellposeModel.eval` with the same fold weights at the default diameter
               (its default settings: tiles, dynamics at full resolution), as in benchmarks/bench_segmentation.py

plus the watershed baseline on the same field. Results go to a JSON file; an existing file's content is kept
under "first_version" (the scores of the inference path the folds were first scored with) unless it already has
that key.

  python benchmarks/rescore_segmentation_loo.py [--kind cells] [--work-dir /work/main/runs/segmenter]

One torch thread by default; about 10-20 s per fold on one core.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FLOWS_REFINEMENT = 1.25
"""The diameter tolerance of the former default (flows with refinement), kept for comparison."""
METHODS = ("nuclei", "deployed", "one_pass", "true_diameter", "naive", "watershed")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kind", choices=("cells", "nuclei"), default="cells", help="which fold models (default: %(default)s)")
    p.add_argument("--work-dir", type=Path, default=REPO / "runs" / "segmenter",
                   help="holds {kind}/loo-{id8}/model.safetensors (default: %(default)s)")
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data",
                   help="real data folder holding hpa2021_subset/ (default: %(default)s)")
    p.add_argument("--size", type=int, default=512, help="working size, longer side in px (default: %(default)s)")
    p.add_argument("--out", type=Path, help="JSON results (default: benchmarks/results/segmentation_loo_{kind}.json)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    return p.parse_args(argv)


def _scores(truth, pred) -> dict[str, float]:
    import numpy as np

    from hpa_cells.instance_metrics import average_precision

    ap = average_precision([truth], [pred], thresholds=(0.5, 0.75))[0]
    return {"ap50": float(ap[0, 0]), "ap75": float(ap[0, 1]), "n_true": int(truth.max()),
            "n_pred": int(len(np.unique(pred)) - 1)}


def rescore_fold(weights: Path, field, kind: str, size: int, watershed, nucleus_weights: Path | None = None,
                 ) -> dict[str, dict]:
    """All `METHODS` for one held-out field; each entry has ap50, ap75, n_true, n_pred, seconds.

    Seconds are one field, cells network only, models already loaded (the first field's also include numba's
    compilation), except "nuclei", which also builds its two networks and runs the nuclei network and QC; the
    watershed's include its nuclei and QC.
    """
    from cellpose.utils import diameters
    from naive_cellpose import naive_cellpose_model, naive_eval

    from segmentation.cellpose_models import resolve_model
    from segmentation.cellpose_segmenter import (
        CellposeNetRunner,
        CellposeSegmenter,
        CellposeSettings,
        cellpose_input,
        default_diameters,
    )

    spec = resolve_model(weights, kind)
    cell_d, nucleus_d = default_diameters(size)
    default_d = cell_d if kind == "cells" else nucleus_d
    true_d = float(diameters(field.mask.astype("int32"))[0])
    x = cellpose_input(field.image, kind)
    runner = CellposeNetRunner(spec, default_d)
    naive = naive_cellpose_model(spec)
    nucleus_model = str(nucleus_weights) if nucleus_weights is not None and nucleus_weights.is_file() else "bundled"
    seeded = CellposeSegmenter(CellposeSettings(cell_model=str(weights), nucleus_model=nucleus_model))
    runs = {
        "nuclei": lambda: seeded.segment_batch([field.image])[0].cells if kind == "cells" else None,
        "deployed": lambda: runner.segment([x], FLOWS_REFINEMENT)[0],
        "one_pass": lambda: runner.segment([x], None)[0],
        "true_diameter": lambda: CellposeNetRunner(spec, true_d, net=runner.net).segment([x], None)[0],
        "naive": lambda: naive_eval(naive, field.image, kind, default_d),
        "watershed": lambda: getattr(watershed.segment_batch([field.image])[0], kind),
    }
    out = {}
    for name in METHODS:
        if name == "nuclei" and kind != "cells":
            continue
        started = time.perf_counter()
        pred = runs[name]()
        out[name] = _scores(field.mask, pred) | {"seconds": round(time.perf_counter() - started, 2)}
    out["true_median_diameter"] = round(true_d, 1)
    out["nuclei_model"] = nucleus_model
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import numpy as np
    import torch

    from segmentation.cellpose_models import sha256_of_file
    from segmentation.training_data import real_reference_fields
    from segmentation.watershed import WatershedSegmenter

    torch.set_num_threads(args.threads)
    out_path = args.out or REPO / "benchmarks" / "results" / f"segmentation_loo_{args.kind}.json"
    fields = real_reference_fields(args.data, args.size, args.kind)
    folds = [(f, args.work_dir / args.kind / f"loo-{f.name[:8]}" / "model.safetensors") for f in fields]
    missing = [str(w) for _, w in folds if not w.is_file()]
    if missing:
        print(f"error: no LOO fold model for {len(missing)} field(s): {missing}", file=sys.stderr)
        return 1
    watershed = WatershedSegmenter()
    per_field = {}
    for field, weights in folds:
        nucleus_weights = args.work_dir / "nuclei" / f"loo-{field.name[:8]}" / "model.safetensors"
        per_field[field.name] = rescore_fold(weights, field, args.kind, args.size, watershed, nucleus_weights)
        print(field.name[:8], {k: v["ap50"] for k, v in per_field[field.name].items() if isinstance(v, dict)},
              flush=True)
    methods = [m for m in METHODS if all(m in row for row in per_field.values())]
    mean = {m: {k: float(np.mean([per_field[f][m][k] for f in per_field])) for k in ("ap50", "ap75")}
            for m in methods}
    previous = json.loads(out_path.read_text()) if out_path.is_file() else {}
    record = {
        "first_version": previous.get("first_version", previous) or None,
        "first_version_note": "as scored by scripts/train_segmenter.py --stages loo with the first inference path "
                              "(no zero margin around the network input; refinement by a second full-scale pass)",
        "current": {"per_field": per_field, "mean": mean},
        "provenance": {"date": datetime.date.today().isoformat(), "machine": platform.machine(),
                       "threads": torch.get_num_threads(), "torch": torch.__version__,
                       "command": "python benchmarks/rescore_segmentation_loo.py " + " ".join(
                           sys.argv[1:] if argv is None else argv),
                       "fold_models": {f.name: {"path": str(w), "sha256": sha256_of_file(w)} for f, w in folds},
                       "nuclei_fold_models": {f.name: {"path": row["nuclei_model"],
                                                       "sha256": sha256_of_file(Path(row["nuclei_model"]))}
                                              for f, row in ((f, per_field[f.name]) for f, _ in folds)
                                              if row["nuclei_model"] != "bundled"}},
    }
    out_path.write_text(json.dumps(record, indent=2) + "\n")

    first = methods[0]
    print(f"\n| held-out field | {' | '.join(f'{m} AP@0.5 | AP@0.75' for m in methods)} | true / predicted cells "
          f"({first}) | nuclei model |")
    print("|---|" + "---|---|" * len(methods) + "---|---|")
    for name, row in per_field.items():
        cells = [f"{row[m][k]:.3f}" for m in methods for k in ("ap50", "ap75")]
        nuclei_model = "held out" if row["nuclei_model"] != "bundled" else "bundled (saw the field)"
        print(f"| {name[:8]} | {' | '.join(cells)} | {row[first]['n_true']} / {row[first]['n_pred']} | "
              f"{nuclei_model} |")
    cells = [f"{mean[m][k]:.3f}" for m in methods for k in ("ap50", "ap75")]
    print(f"| **mean** | {' | '.join(cells)} | | |")
    print(f"\nwritten {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
