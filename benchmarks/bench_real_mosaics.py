"""The real-cell mosaic benchmark of issue 13 (point 3): cell-level mAP on real cells whose truth is known.

    python benchmarks/bench_real_mosaics.py [--real-work runs/bench_real] [--work runs/bench_real_mosaics]
                                            [--rows ROW ...] [--mosaics 30] [--train-mosaics 60]

A single-label real field has (nearly) only cells positive for its label. Per fold k of bench_real.py's
cross-validation (its split files, `REAL_WORK/splits/fold{k}.json`), held-out mosaics are drawn ONLY from fold
k's held-out single-label fields (`mil.mosaics`: 2-4 sources with different labels, every usable cell, seeded),
and every mosaic cell is scored against its source field's label (`mil.mosaic_evaluation`). A fold whose
held-out single-label fields carry fewer than 2 different labels cannot give such mosaics and is skipped (said
so in the output). Cells are pooled over folds and scored once.

Rows (each fold's model predicts only its own held-out fold's mosaics):
- models bench_real.py trained (inference only): attention_synthetic (pretrained on synthetic fields only),
  attention_real, attention_finetuned, mean_real (and mean_finetuned when it exists); each scored three ways:
  `gated` (sqrt(p_cell * p_bag), what prediction folders hold), `cell` (the cell's own probability) and
  `image` (every cell gets its mosaic's pooled image probability: no per-cell information at all);
- leak: `mil.leak_baseline`, per-cell channel intensity statistics into a logistic regression, trained on
  mosaics drawn from fold k's training fields (train + validation) only;
- {attention, mean}_mosaic: fine-tuned from bench_real's pretrained synthetic model on fold k's training fields
  with `TrainConfig.mosaic_bags` extra mosaic bags per epoch (`--finetune-epochs`, `--finetune-mosaic-bags`).

Intervals: 95% bootstrap over held-out mosaics, and over source fields (a drawn field brings all of its cells in
every mosaic holding it): the same draws for every row, so differences are paired. Held-out folds have few
single-label fields, so one fold's mosaics reuse the same fields: mosaics are not independent, and the interval
over source fields is the honest one (the wider). Resumable: the
work folder (default runs/bench_real_mosaics, outside git) keeps the mosaics, each row's per-fold cell scores and
the fine-tuned models. Results: --results (default benchmarks/results/real_mosaics.json) and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from dataclasses import asdict, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_real import RowError, machine, model_settings, trained  # noqa: E402

EXISTING = ("attention_synthetic", "attention_real", "attention_finetuned", "mean_real", "mean_finetuned")
TRAINED_HERE = ("attention_mosaic", "mean_mosaic")
ROWS = (*EXISTING, "leak", *TRAINED_HERE)
SCORES = ("gated", "cell", "image")
COMPARISONS = (("mean_finetuned:gated", "attention_finetuned:gated"), ("mean_finetuned:cell", "attention_finetuned:cell"),
               ("mean_real:gated", "attention_finetuned:gated"), ("mean_real:cell", "attention_finetuned:cell"),
               ("mean_real:gated", "attention_real:gated"), ("mean_real:cell", "attention_real:cell"),
               ("mean_mosaic:gated", "attention_mosaic:gated"), ("mean_mosaic:cell", "attention_mosaic:cell"),
               ("leak:cell", "attention_finetuned:gated"), ("leak:cell", "attention_finetuned:cell"),
               ("leak:cell", "mean_real:gated"), ("leak:cell", "mean_finetuned:gated"),
               ("leak:cell", "attention_mosaic:gated"),
               ("attention_finetuned:image", "attention_finetuned:gated"),
               ("attention_finetuned:image", "attention_finetuned:cell"),
               ("attention_finetuned:gated", "attention_mosaic:gated"),
               ("attention_synthetic:gated", "attention_finetuned:gated"))
"""(A, B) pairs of row:score whose paired bootstrap B - A is reported when both ran."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--real-work", type=Path, default=REPO / "runs" / "bench_real",
                   help="bench_real.py's work folder: real_cells.h5, splits/, models/ (only read; default: %(default)s)")
    p.add_argument("--work", type=Path, default=REPO / "runs" / "bench_real_mosaics",
                   help="this benchmark's work folder (default: %(default)s)")
    p.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS), help="rows to run, in this order")
    p.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results" / "real_mosaics.json")
    p.add_argument("--mosaics", type=int, default=30, help="held-out mosaics per fold (default: %(default)s)")
    p.add_argument("--train-mosaics", type=int, default=60,
                   help="leak baseline: training mosaics per fold (default: %(default)s)")
    p.add_argument("--max-sources", type=int, default=4, help="sources per mosaic at most (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="mosaic, bootstrap and training seed (default: %(default)s)")
    p.add_argument("--finetune-epochs", type=int, default=8, help="*_mosaic rows: epochs (default: %(default)s)")
    p.add_argument("--finetune-mosaic-bags", type=int, default=16,
                   help="*_mosaic rows: mosaic bags per epoch (default: %(default)s)")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s)")
    p.add_argument("--score-only", action="store_true", help="run nothing; score what the work folder holds")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=WORK",
                   help="also score the attention_finetuned cell scores another work folder of this benchmark holds "
                        "(the same mosaics; e.g. a bench_real.py --recipe), as row attention_finetuned@NAME with the "
                        "paired differences against attention_finetuned and mean_finetuned; repeatable")
    return p.parse_args(argv)


# ----- folds and mosaics --------------------------------------------------------------------------------------


def load_splits(args: argparse.Namespace) -> list[dict]:
    """bench_real.py's split files (fold, train, validation, held_out)."""
    paths = sorted((args.real_work / "splits").glob("fold*.json"))
    if not paths:
        raise SystemExit(f"error: no split files in {args.real_work / 'splits'}: run benchmarks/bench_real.py first")
    return [json.loads(p.read_text()) for p in paths]


def mosaics_to_json(mosaics: list) -> list[dict]:
    return [{"mosaic_id": m.mosaic_id, "sources": [asdict(s) for s in m.sources]} for m in mosaics]


def mosaics_from_json(records: list[dict]) -> list:
    from mil.mosaics import Mosaic, MosaicSource

    return [Mosaic(r["mosaic_id"], tuple(MosaicSource(s["cache_index"], s["image_id"], s["class_id"],
                                                      tuple(s["cell_rows"])) for s in r["sources"]))
            for r in records]


def fold_mosaics(args: argparse.Namespace, split: dict, cache: Path) -> dict:
    """The fold's held-out and (leak baseline) training mosaics, drawn once and saved; `skipped` says why a
    fold has none."""
    from hpa_cells.classes import CLASS_NAMES
    from mil.mosaics import draw_mosaics, single_label_images

    path = args.work / "mosaics" / f"fold{split['fold']}.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        for key in ("held_out", "train"):
            saved[key] = mosaics_from_json(saved[key])
        return saved
    fold = split["fold"]
    held = single_label_images([cache], split["held_out"])
    train = single_label_images([cache], split["train"] + split["validation"])
    out = {"fold": fold, "held_out_fields": len(split["held_out"]), "held_out_single_label": len(held),
           "held_out_classes": sorted({CLASS_NAMES[i.class_id] for i in held}),
           "train_single_label": len(train), "held_out": [], "train": [], "skipped": None}
    if len(out["held_out_classes"]) < 2:
        out["skipped"] = (f"fold {fold}: its {len(held)} held-out single-label fields carry "
                          f"{len(out['held_out_classes'])} label(s) ({', '.join(out['held_out_classes']) or 'none'}); "
                          "mosaics need sources with different labels")
    else:
        out["held_out"] = draw_mosaics(held, args.mosaics, 2, args.max_sources, seed=args.seed,
                                       id_prefix=f"fold{fold}-mosaic")
        out["train"] = draw_mosaics(train, args.train_mosaics, 2, args.max_sources, seed=args.seed + 1,
                                    id_prefix=f"fold{fold}-train")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**out, "held_out": mosaics_to_json(out["held_out"]),
                                "train": mosaics_to_json(out["train"])}) + "\n")
    return out


# ----- rows ---------------------------------------------------------------------------------------------------


def model_folder(args: argparse.Namespace, row: str, fold: int) -> Path:
    """The fold's model of an existing or trained-here row; RowError when it is not there."""
    kind, start = row.split("_")
    if start == "synthetic":
        folder = args.real_work / "models" / f"{kind}_pretrained"
    elif row in TRAINED_HERE:
        folder = args.work / "models" / row / f"fold{fold}"
    else:
        folder = args.real_work / "models" / row / f"fold{fold}"
    if row not in TRAINED_HERE and not trained(folder):
        raise RowError(f"bench_real.py has no finished model {folder}")
    return folder


def train_mosaic_model(args: argparse.Namespace, row: str, split: dict) -> Path:
    """*_mosaic: fine-tuned from bench_real's synthetic model on the fold's training fields plus mosaic bags."""
    from mil.training import train_model

    kind = row.split("_")[0]
    pretrained = args.real_work / "models" / f"{kind}_pretrained"
    if not trained(pretrained):
        raise RowError(f"bench_real.py's pretrained {kind} model {pretrained} is not finished")
    folder = model_folder(args, row, split["fold"])
    if trained(folder):
        return folder
    split_path = args.work / "splits" / f"fold{split['fold']}.json"
    split_path.parent.mkdir(parents=True, exist_ok=True)
    split_path.write_text(json.dumps({k: split[k] for k in ("fold", "train", "validation", "held_out")}) + "\n")
    rargs = argparse.Namespace(epochs=args.finetune_epochs, lr=1e-3, seed=args.seed, patience=100, max_cells=8,
                               encoder="resnet10t", input_size=64, image_size=256)
    model_config, base = model_settings(kind, rargs)
    config = replace(base, split_file=str(split_path), init_from=str(pretrained), init_standardisation="keep",
                     mosaic_bags=args.finetune_mosaic_bags)
    print(f"{row}: fold {split['fold']}: training -> {folder}", flush=True)
    train_model(args.real_work / "real_cells.h5", folder, model_config, config)
    return folder


def model_scores(folder: Path, cache: Path, mosaics: list) -> dict:
    """{gated, cell, image}: `N,K` scores of the mosaics' cells (mosaic_cell_truth order) by one model."""
    import numpy as np

    from hpa_cells.classes import CLASS_NAMES
    from mil.inference import score_cells
    from mil.model_folder import load_model
    from mil.mosaic_evaluation import predict_mosaics
    from mil.mosaics import mosaic_cell_truth

    predictions = predict_mosaics(load_model(folder), [cache], mosaics, cell_score="cell")
    cells, truth = predictions.cells, mosaic_cell_truth(mosaics)
    if len(cells) != len(truth) or not (cells["source_image_id"].to_numpy()
                                        == truth["source_image_id"].to_numpy()).all():
        raise RuntimeError("mosaic predictions are not aligned with the mosaic truth table")
    own = cells[list(CLASS_NAMES[: predictions.image_probs.shape[1]])].to_numpy(dtype=np.float64)
    # the gated score per cell, by the same rule as prediction folders (`mil.inference.score_cells`)
    position = {m: i for i, m in enumerate(predictions.image_ids)}
    image = predictions.image_probs[[position[m] for m in truth["mosaic_id"]]].astype(np.float64)
    gated = np.stack([score_cells(o[None], i, "gated")[0] for o, i in zip(own, image, strict=True)]) if len(own) else own
    return {"gated": gated, "cell": own, "image": image}


def leak_scores(cache: Path, train: list, held: list, seed: int) -> dict:
    from mil.leak_baseline import cell_intensity_features, fit_leak_baseline

    baseline = fit_leak_baseline([cache], train, seed)
    return {"cell": baseline.cell_scores(cell_intensity_features([cache], held))}


def run_row(args: argparse.Namespace, row: str, folds: list[dict], splits: dict) -> None:
    """One row over every fold with mosaics; per-fold scores saved as work/scores/ROW/fold{k}.npz."""
    import numpy as np

    cache = args.real_work / "real_cells.h5"
    for info in folds:
        if info["skipped"]:
            continue
        fold = info["fold"]
        path = args.work / "scores" / row / f"fold{fold}.npz"
        if path.is_file():
            continue
        started = time.time()
        if row == "leak":
            scores = leak_scores(cache, info["train"], info["held_out"], args.seed)
        else:
            folder = train_mosaic_model(args, row, splits[fold]) if row in TRAINED_HERE else model_folder(args, row, fold)
            scores = model_scores(folder, cache, info["held_out"])
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **scores)
        print(f"{row}: fold {fold}: {time.time() - started:.0f} s", flush=True)


# ----- scoring ------------------------------------------------------------------------------------------------


def pooled_truth(folds: list[dict]):
    """The truth table of every held-out mosaic cell, folds in order (mosaic ids carry their fold)."""
    import pandas as pd

    from mil.mosaics import mosaic_cell_truth

    return pd.concat([mosaic_cell_truth(f["held_out"]) for f in folds if not f["skipped"]], ignore_index=True)


def pooled_scores(args: argparse.Namespace, row: str, folds: list[dict]) -> dict | None:
    """score name -> pooled `N,K` cell scores of a row, or None unless every fold with mosaics has its scores. A
    row `ROW@NAME` reads ROW's scores from the --variant work folder NAME."""
    import numpy as np

    work = args.work
    if "@" in row:
        row, name = row.split("@")
        work = dict(v.split("=", 1) for v in args.variant)[name]
    used = [f["fold"] for f in folds if not f["skipped"]]
    paths = [Path(work) / "scores" / row / f"fold{k}.npz" for k in used]
    if not all(p.is_file() for p in paths):
        return None
    parts = [np.load(p, allow_pickle=False) for p in paths]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0].files}


def bootstrap(scores, truth, draws, unit: str = "mosaic_id"):
    """(cell mAP on all cells, per-resample cell mAPs) with the `unit` column's values (mosaics, or source fields:
    all of a field's cells in every mosaic that holds it) drawn as `draws` (resamples x number of units). A
    resample's mAP is `score_mosaic_cells`' (macro AP over the classes with positive cells), computed only over
    the columns of classes present at all (the others have no positives in any resample)."""
    import numpy as np

    from hpa_cells.metrics import per_class_average_precision
    from mil.mosaics import score_mosaic_cells

    codes, uniques = truth[unit].factorize()
    rows_of = [np.flatnonzero(codes == i) for i in range(len(uniques))]
    present = np.unique(truth["class_id"].to_numpy())
    hits = truth["class_id"].to_numpy()[:, None] == present[None, :]
    chosen = np.asarray(scores)[:, present]
    samples = np.empty(len(draws))
    for r, draw in enumerate(draws):
        rows = np.concatenate([rows_of[i] for i in draw])
        samples[r] = np.nanmean(per_class_average_precision(hits[rows], chosen[rows]))
    return score_mosaic_cells(scores, truth), samples


def _interval(value: float, samples) -> dict:
    import numpy as np

    low, high = np.nanpercentile(samples, [2.5, 97.5])
    return {"value": float(value), "low": float(low), "high": float(high)}


def score_rows(args: argparse.Namespace, folds: list[dict], status: dict) -> dict:
    import numpy as np

    from hpa_cells.classes import CLASS_NAMES

    truth = pooled_truth(folds)
    n_mosaics, n_fields = truth["mosaic_id"].nunique(), truth["source_image_id"].nunique()
    rng = np.random.default_rng(args.seed)
    draws = {"mosaic_id": rng.integers(0, n_mosaics, size=(args.resamples, n_mosaics)),
             "source_image_id": rng.integers(0, n_fields, size=(args.resamples, n_fields))}
    rows, samples = {}, {}
    variants = [f"attention_finetuned@{v.split('=', 1)[0]}" for v in args.variant]
    for row in (*ROWS, *variants):
        found = pooled_scores(args, row, folds)
        if found is None:
            rows[row] = {"status": status.get(row, "not run")}
            continue
        rows[row] = {"status": "done", "scores": {}}
        for name, scores in found.items():
            full, by_mosaic = bootstrap(scores, truth, draws["mosaic_id"])
            by_field = bootstrap(scores, truth, draws["source_image_id"], "source_image_id")[1]
            samples[f"{row}:{name}"] = by_mosaic, by_field
            rows[row]["scores"][name] = {
                **_interval(full.mean_ap, by_mosaic),
                "by_source_field": _interval(full.mean_ap, by_field),
                "per_class_ap": {CLASS_NAMES[c]: float(v) for c, v in enumerate(full.per_class_ap) if not np.isnan(v)}}
        print(f"scored {row}", flush=True)
    comparisons = {}
    pairs = [*COMPARISONS, *((f"{base}:gated", f"{v}:gated") for v in variants
                             for base in ("attention_finetuned", "mean_finetuned"))]
    for a, b in pairs:
        if a in samples and b in samples:
            va = rows[a.split(":")[0]]["scores"][a.split(":")[1]]["value"]
            vb = rows[b.split(":")[0]]["scores"][b.split(":")[1]]["value"]
            diff, by_field = samples[b][0] - samples[a][0], samples[b][1] - samples[a][1]
            comparisons[f"{b} - {a}"] = {**_interval(vb - va, diff), "share_b_better": float(np.mean(diff > 0)),
                                         "by_source_field": {**_interval(vb - va, by_field),
                                                             "share_b_better": float(np.mean(by_field > 0))}}
    return {"rows": rows, "comparisons": comparisons, "n_mosaics": int(n_mosaics), "n_cells": len(truth),
            "n_source_fields": int(n_fields), "n_classes": int(truth["class_id"].nunique()),
            "cells_per_class": {CLASS_NAMES[c]: int(n) for c, n in truth["class_id"].value_counts().sort_index().items()},
            "folds": [{k: v for k, v in f.items() if k not in ("held_out", "train")}
                      | {"held_out_mosaics": len(f["held_out"]), "train_mosaics": len(f["train"])} for f in folds]}


def print_table(results: dict) -> None:
    def cell(entry):
        if not entry:
            return "-"
        field = entry["by_source_field"]
        return (f"{entry['value']:.3f} [{entry['low']:.3f}, {entry['high']:.3f}] "
                f"[{field['low']:.3f}, {field['high']:.3f}]")

    print(f"\n{results['n_cells']} cells in {results['n_mosaics']} held-out mosaics from "
          f"{results['n_source_fields']} single-label fields of {results['n_classes']} classes; cell mAP "
          "[95% bootstrap over mosaics] [95% bootstrap over source fields]\n")
    print("| row | gated sqrt(p_cell p_bag) | own cell probability | image probability for every cell |")
    print("|---|---|---|---|")
    for row, entry in results["rows"].items():
        if entry["status"] != "done":
            print(f"| {row} | {entry['status']} | | |")
            continue
        s = entry["scores"]
        print(f"| {row} | {cell(s.get('gated'))} | {cell(s.get('cell'))} | {cell(s.get('image'))} |")
    print("\n| paired difference (B - A) | cell mAP [by mosaics] | share B > A | [by source fields] | share B > A |")
    print("|---|---|---|---|---|")
    for name, d in results["comparisons"].items():
        f = d["by_source_field"]
        print(f"| {name} | {d['value']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] | {d['share_b_better']:.2f} "
              f"| [{f['low']:+.3f}, {f['high']:+.3f}] | {f['share_b_better']:.2f} |")


def main(argv: list[str] | None = None) -> int:
    """Draw the mosaics, run the asked rows (each resumable), score what exists; 1 when an asked row failed."""
    args = parse_args(argv)
    import logging

    import torch

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    torch.set_num_threads(args.threads)
    started, machine_at_start = time.time(), machine()
    args.work.mkdir(parents=True, exist_ok=True)
    status_path = args.work / "status.json"
    status = json.loads(status_path.read_text()) if status_path.is_file() else {}
    cache = args.real_work / "real_cells.h5"
    splits = {s["fold"]: s for s in load_splits(args)}
    folds = [fold_mosaics(args, splits[k], cache) for k in sorted(splits)]
    for f in folds:
        print(f["skipped"] or f"fold {f['fold']}: {f['held_out_single_label']} held-out single-label fields of "
              f"{len(f['held_out_classes'])} labels -> {len(f['held_out'])} mosaics; "
              f"{f['train_single_label']} training single-label fields -> {len(f['train'])} leak training mosaics")
    if not args.score_only:
        for row in args.rows:
            print(f"\n== {row}", flush=True)
            try:
                run_row(args, row, folds, splits)
                status.pop(row, None)
            except RowError as err:
                status[row] = f"not run: {err}"
                print(f"{row}: {status[row]}")
            except Exception as err:  # one failed row must not stop the others
                traceback.print_exc()
                status[row] = f"failed: {type(err).__name__}: {err}"
            status_path.write_text(json.dumps(status, indent=1) + "\n")
    results = score_rows(args, folds, status)
    results.update(date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), machine=machine_at_start,
                   command="python benchmarks/bench_real_mosaics.py " + " ".join(argv or sys.argv[1:]),
                   seconds_this_run=round(time.time() - started, 1),
                   settings={k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()})
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=1) + "\n")
    print_table(results)
    return 1 if not args.score_only and any(row in status for row in args.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
