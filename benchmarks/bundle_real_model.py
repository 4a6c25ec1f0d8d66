"""Package the bundled MIL model (`predict.py --model bundled`) from a trained model folder, with its model card.

    python benchmarks/bundle_real_model.py --trained runs/bundled_train [--out mil/models/bundled]
           [--results benchmarks/results/real_benchmark.json] [--check-cache runs/bench_real/real_cells.h5]

The trained folder is the attention MIL pretrained on synthetic fields (bench_real.py's pretraining stage) and
fine-tuned on all 63 real fields (`train.py --init`); its cross-validated quality is bench_real.py's
`attention_finetuned` row, read from `--results`. The weights are stored as float16 (half the size); with
`--check-cache` both the float32 and the float16 model predict that cache and the largest difference in image
probability is written into the card.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COPIED = ("config.json", "thresholds.json", "metrics.json")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trained", type=Path, required=True, help="the trained model folder to package")
    p.add_argument("--out", type=Path, default=REPO / "mil" / "models" / "bundled")
    p.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results" / "real_benchmark.json")
    p.add_argument("--check-cache", type=Path, help="a cell cache to compare float32 and float16 predictions on")
    return p.parse_args(argv)


def write_half_precision(trained: Path, out: Path) -> None:
    """The model folder `trained` copied to `out` with its floating-point weights as float16."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from hpa_cells.atomic_files import atomic_output

    out.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        shutil.copyfile(trained / name, out / name)
    source = trained / "weights.safetensors"
    with safe_open(str(source), framework="pt") as handle:
        metadata = handle.metadata() or {}
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in load_file(str(source)).items()}
    target = out / "weights.safetensors"
    if target.is_file():
        existing = load_file(str(target))
        if existing.keys() == state.keys() and all(torch.equal(existing[k], state[k]) for k in state):
            return  # same tensors already there: keep the file (and its bytes in git)
    with atomic_output(out / "weights.safetensors") as partial:
        save_file({k: v.contiguous() for k, v in state.items()}, str(partial),
                  metadata={**metadata, "dtype": str(torch.float16)})


def largest_difference(trained: Path, out: Path, cache: Path) -> float:
    """Largest absolute difference in image probability between the float32 and float16 models on `cache`."""
    import numpy as np

    from mil.inference import predict_cache
    from mil.model_folder import load_model

    full = predict_cache(load_model(trained), cache, show_progress=False)
    half = predict_cache(load_model(out), cache, show_progress=False)
    return float(np.abs(full.image_probs - half.image_probs).max())


def _row_line(rows: dict, key: str) -> str:
    row = rows.get(key, {})
    if row.get("status") != "done":
        return f"| {row.get('title', key)} | did not finish | | |"
    m = row["metrics"]
    cell = lambda name: f"{m[name]['value']:.3f} [{m[name]['low']:.3f}, {m[name]['high']:.3f}]"  # noqa: E731
    return f"| {row['title']} | {cell('map')} | {cell('macro_f1')} | {cell('micro_f1')} |"


def model_card(results: dict, config: dict, size_bytes: int, difference: float | None) -> str:
    """MODEL_CARD.md: how the model was made, its cross-validated quality, what not to trust it with."""
    from hpa_cells.classes import CLASS_NAMES

    rows = results["rows"]
    positives = results["positive_fields_per_class"]
    per_class = rows["attention_finetuned"]["per_class_ap"]
    class_lines = "\n".join(f"| {name} | {positives.get(name, 0)} | {per_class[name]['value']:.2f} "
                            f"[{per_class[name]['low']:.2f}, {per_class[name]['high']:.2f}] |"
                            for name in results["classes_evaluated"])
    unseen = [name for name in CLASS_NAMES if name not in results["classes_evaluated"]]
    model = config["model"]
    check = (f"float16 against float32 weights on the 63 real fields: largest image-probability difference "
             f"{difference:.4f}." if difference is not None else "")
    table = "\n".join(_row_line(rows, key) for key in ("prior", "attention_synthetic", "attention_real",
                                                       "attention_finetuned", "mean_real", "mean_finetuned",
                                                       "image_real", "image_finetuned"))
    return TEMPLATE.format(encoder=model["encoder"], head=model["head"], input_size=model["input_size"],
                           size_kib=size_bytes // 1024, check=check, table=table, class_lines=class_lines,
                           unseen=", ".join(unseen), date=results.get("date", ""))


TEMPLATE = """# The bundled MIL model (`predict.py --model bundled`, the default)

**What it is.** An attention MIL ({encoder} encoder per cell, `{head}` pooling, {input_size} px crops plus the cell
mask) that turns the cells of one HPA field into the field's 28 localization probabilities and a probability per
cell. Weights stored as float16 ({size_kib} KiB). {check}

**How it was made** (`benchmarks/bench_real.py`, then `benchmarks/bundle_real_model.py`):
1. Pretrained on 200 synthetic 512 px fields (`hpa_cells.synthetic`, seed 0, balanced classes; segmented with the
   bundled Cellpose models, flows assembly), 10 epochs, image labels only.
2. Fine-tuned (`train.py --init`, input standardisation kept) on all 63 labelled real HPA fields in
   `../shared/data` (58 fields of the 2018 competition at 512 px; 5 fields of the 2021 competition shrunk 4x to the
   same scale, their 2021 labels mapped to the 2018 classes), segmented with the bundled Cellpose models (cells grown
   from nuclei), 15 epochs at most with early stopping on a stratified 20 % of the fields, which also set the
   per-class thresholds (`thresholds.json`). Image labels only: no cell was ever labelled.

**How good it is.** Nobody can measure the bundled model itself on fields it has not seen, since it saw every
labelled real field we have. Its recipe was measured by 5-fold cross-validation over the 63 fields (the same
recipe trained on four folds, scored on the fifth; predictions pooled): image-level mAP over the 11 classes with at
least 3 positive fields, macro F1 over the same classes, micro F1; 95 % bootstrap intervals over fields
({date}; details in BENCHMARKS.md, "Real HPA fields"):

| row | image mAP | macro F1 | micro F1 |
|---|---|---|---|
{table}

Per class (cross-validated AP of this recipe; positive real fields among the 63):

| class | positive fields | AP [95 % interval] |
|---|---|---|
{class_lines}

**Classes it has seen too few times to trust**: every class not in the table above had fewer than 3 positive real
fields (most had none): {unseen}. For those it has only seen synthetic cells, whose patterns are this project's
drawings, not real proteins; their probabilities on real fields are close to guesses.

**What it is not.** Not a validated diagnostic or annotation tool: 63 real fields are very few, its image mAP of
about 0.25 is far from what models trained on the full HPA data reach, and its per-cell probabilities have never
been checked against per-cell truth on real cells. Cells in a field are segmented by the bundled Cellpose models,
whose mistakes (merged or missed cells) it inherits. Use its maps to look, not to conclude; fine-tune it on your own
labelled fields (`train.py --init mil/models/bundled --cache YOUR_CACHE --out runs/yours`) when you have them.
"""


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = json.loads(args.results.read_text())
    if results["rows"].get("attention_finetuned", {}).get("status") != "done":
        print(f"error: {args.results} has no finished attention_finetuned row; run benchmarks/bench_real.py first")
        return 2
    write_half_precision(args.trained, args.out)
    difference = largest_difference(args.trained, args.out, args.check_cache) if args.check_cache else None
    config = json.loads((args.out / "config.json").read_text())
    size = (args.out / "weights.safetensors").stat().st_size
    (args.out / "MODEL_CARD.md").write_text(model_card(results, config, size, difference))
    print(f"bundled model -> {args.out} ({size / 1024:.0f} KiB of float16 weights)"
          + (f"; float16 vs float32 image probabilities differ by at most {difference:.4f}" if difference is not None
             else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
