"""README figures of real HPA fields, each labelled by the cross-validation model that never saw it.

    python benchmarks/real_overviews.py [--work runs/bench_real] [--row attention_finetuned] [--out docs/images]
                                        [--ids ID ...]

For every chosen field, its held-out fold is looked up in `benchmarks/results/real_folds.json`; the model that
`benchmarks/bench_real.py` trained for that fold of `--row` (on the other four folds only) predicts the real cell
cache, and the field's `overview.png` is drawn from the cache's stored pixels. The fields are chosen before
looking at any prediction (default: two 2018 fields and two 2021 fields, see DEFAULT_IDS); the script prints each
field's true labels beside the model's top calls, and writes `real_overviews.json` beside the figures.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FOLDS_FILE = REPO / "benchmarks" / "results" / "real_folds.json"

DEFAULT_IDS = (
    "000a6c98-bb9b-11e8-b2b9-ac1f6b6435d0",  # 2021 field (2048 px, shrunk 4x): nucleoplasm, nuclear membrane, nucleoli, Golgi
    "b6a469d8-bbad-11e8-b2ba-ac1f6b6435d0",  # 2021 field: mitotic spindle
    "25169a96-bbca-11e8-b2bc-ac1f6b6435d0",  # 2018 field (512 px): nucleoplasm
    "1d7aa1c8-bbad-11e8-b2ba-ac1f6b6435d0",  # 2018 field: nucleoplasm
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=REPO / "runs" / "bench_real", help="bench_real.py's work folder")
    p.add_argument("--row", default="attention_finetuned", help="the bench_real row whose fold models label the fields")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "images", help="where the figures go")
    p.add_argument("--ids", nargs="+", default=list(DEFAULT_IDS), help="field ids (default: %(default)s)")
    return p.parse_args(argv)


def fold_predictions(work: Path, row: str, fold: int) -> Path:
    """The prediction folder of fold `fold`'s model over the whole real cell cache (made once)."""
    from hpa_cells.cache import CellCache
    from hpa_cells.predictions import write_prediction_folder
    from mil.inference import predict_cache
    from mil.model_folder import load_model

    out = work / "overviews" / row / f"fold{fold}"
    if (out / "manifest.json").is_file():
        return out
    model_folder = work / "models" / row / f"fold{fold}"
    cache = work / "real_cells.h5"
    predictions = predict_cache(load_model(model_folder), cache, show_progress=False)
    with CellCache(cache) as opened:
        flag_names = opened.qc_flag_names
    manifest = {"models": [str(model_folder)], "cache": str(cache), "cell_score": predictions.cell_score,
                "note": f"bench_real row {row}, fold {fold}: trained on the other folds only"}
    write_prediction_folder(predictions, out, manifest, flag_names)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from hpa_cells.classes import CLASS_NAMES
    from hpa_cells.maps import PredictionRun, write_maps
    from hpa_cells.predictions import parse_predicted_ids

    folds = {field["id"]: field for field in json.loads(FOLDS_FILE.read_text())["fields"]}
    unknown = [i for i in args.ids if i not in folds]
    if unknown:
        print(f"error: not fields of {FOLDS_FILE}: {', '.join(unknown)}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    record = []
    for number, image_id in enumerate(args.ids, start=1):
        fold = folds[image_id]["fold"]
        run = PredictionRun(fold_predictions(args.work, args.row, fold))
        maps = args.work / "overviews" / args.row / "maps"
        write_maps(run, maps, write_tiff=False, image_ids=[image_id])
        target = args.out / f"overview_real_{number}.png"
        shutil.copyfile(maps / image_id / "overview.png", target)
        row = run.folder.images.set_index("image_id").loc[image_id]
        truth = [CLASS_NAMES[c] for c in folds[image_id]["labels"]] or ["Negative (no label)"]
        called = ", ".join(CLASS_NAMES[c] for c in parse_predicted_ids(row["predicted"] if isinstance(row["predicted"], str) else "")) or "none"
        record.append({"figure": target.name, "image_id": image_id, "held_out_fold": fold,
                       "model": f"{args.row}/fold{fold}", "true_labels": truth, "predicted": called})
        print(f"{target}: {image_id} (fold {fold}) true: {', '.join(truth)}; predicted: {called}")
    (args.out / "real_overviews.json").write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
