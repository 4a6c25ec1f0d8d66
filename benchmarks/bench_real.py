"""The real-data benchmark of issue 13: image-level quality on the 63 labelled real HPA fields, by 5-fold
cross-validation.

    python benchmarks/bench_real.py [--data ../shared/data] [--work runs/bench_real] [--rows ROW ...]
                                    [--synthetic-fields 200] [--synthetic-epochs 10] [--epochs 15]

Fields: the 58 of hpa2018_real58 and the 5 of hpa2021_subset (shrunk 4x so their cells have the 2018 pixel
size; `real_data.py`), segmented with the project's default segmenter (the bundled Cellpose models, cells grown
from nuclei) into a cell cache, and into a whole-field cache (256 px) for the image-level CNN. Folds: 5-fold
multilabel-stratified over the fields, made once and saved in `benchmarks/results/real_folds.json`; inside each
fold's training fields an inner validation split (20 %, stratified) for early stopping and the class thresholds.
Every trained row trains on exactly those fields (`train.py --split-file`) and predicts the held-out fold;
predictions are pooled over the 5 folds and scored once.

Rows (all on the same folds):
- prior: every field gets the class frequencies of the fold's training fields (what chance gives);
- {attention, mean, image}_synthetic: the model pretrained on synthetic fields only, no real training;
- {attention, mean, image}_real: the same model trained on the real training folds from scratch;
- {attention, mean, image}_finetuned: pretrained on synthetic, then fine-tuned on the real training folds
  (`train.py --init`); attention = class-gated attention MIL (the default), mean = mean-pooling MIL, image = the
  same encoder on the whole field (no segmentation).
The synthetic pretraining is a stage: --synthetic-fields balanced 512 px fields (seed --seed), segmented like the
demo (bundled Cellpose, flows assembly, one pass) and a whole-field cache, one model per kind. With
--synthetic-preset hpa2018 (fields made to look like real 2018 fields) they are segmented like the real fields.

Metrics (`hpa_cells.metrics`): image mAP (macro AP over classes with >= 3 positive fields), macro F1 over the
same classes (each fold's model's thresholds), micro F1, per-class AP, each with a 95% bootstrap interval over
fields; paired bootstrap differences between rows (--score-only scores what the work folder holds so far, beside
a running benchmark). Everything is resumable: the work folder (default
runs/bench_real, outside git) keeps caches, models and each finished row's pooled predictions. Results:
--results (default benchmarks/results/real_benchmark.json) and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from real_data import (  # noqa: E402
    FoldsFileError,
    RealDataError,
    find_real_fields,
    fold_splits,
    load_or_make_folds,
    segment_fields,
)

KINDS = ("attention", "mean", "image")
STARTS = ("synthetic", "real", "finetuned")
ROWS = ("prior", "attention_synthetic", "attention_real", "attention_finetuned", "mean_synthetic", "mean_real",
        "mean_finetuned", "image_synthetic", "image_real", "image_finetuned")
KIND_TITLES = {"attention": "attention MIL", "mean": "mean-pooling MIL", "image": "image-level CNN (whole field)"}
START_TITLES = {"synthetic": "synthetic only (no real training)", "real": "real folds from scratch",
                "finetuned": "synthetic, then fine-tuned on real folds"}
COMPARISONS = (("attention_real", "attention_finetuned"), ("attention_synthetic", "attention_finetuned"),
               ("image_real", "attention_finetuned"), ("image_finetuned", "attention_finetuned"),
               ("image_synthetic", "attention_finetuned"), ("mean_finetuned", "attention_finetuned"),
               ("attention_real", "attention_synthetic"), ("prior", "attention_synthetic"),
               ("prior", "attention_real"))
"""(A, B) pairs whose paired bootstrap B - A is reported when both rows have predictions."""


class RowError(RuntimeError):
    """A row that cannot run in this checkout or with these options; the message says why."""


def row_title(row: str) -> str:
    if row == "prior":
        return "class-frequency prior"
    kind, start = row.split("_")
    return f"{KIND_TITLES[kind]}, {START_TITLES[start]}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_data = Path(os.environ.get("HPA_REAL_DATA") or REPO.parent / "shared" / "data")
    p.add_argument("--data", type=Path, default=default_data,
                   help="folder holding hpa2018_real58/ and hpa2021_subset/ (default: $HPA_REAL_DATA or %(default)s)")
    p.add_argument("--work", type=Path, default=REPO / "runs" / "bench_real",
                   help="work folder: caches, models, predictions (default: %(default)s)")
    p.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS), help="rows to run, in this order")
    p.add_argument("--folds-file", type=Path, default=REPO / "benchmarks" / "results" / "real_folds.json",
                   help="saved folds, made once (default: %(default)s)")
    p.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results" / "real_benchmark.json")
    p.add_argument("--seed", type=int, default=0, help="folds, synthetic data and training seed (default: %(default)s)")
    p.add_argument("--synthetic-fields", type=int, default=200, help="synthetic pretraining fields (default: %(default)s)")
    p.add_argument("--synthetic-epochs", type=int, default=10, help="synthetic pretraining epochs (default: %(default)s)")
    p.add_argument("--synthetic-preset", default="default",
                   help="appearance preset of the synthetic fields (hpa_cells.synthetic.PRESETS: default, hpa2018); "
                        "a preset other than default is segmented like the real fields (cells grown from nuclei); "
                        "use its own --work folder, as the synthetic caches and models are kept there (default: "
                        "%(default)s)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=WORK",
                   help="also score the rows of another work folder (the same folds, another setting, e.g. "
                        "hpa2018=runs/bench_real_hpa2018), as rows ROW@NAME with the paired difference ROW@NAME - "
                        "ROW; repeatable")
    p.add_argument("--recipe", default="default",
                   help="the attention rows' training recipe, a row of bench_weak_supervision.py (RECIPES: e.g. "
                        "topk1, dual_stream, self_training), in pretraining and fine-tuning alike; use its own --work "
                        "folder (default: %(default)s)")
    p.add_argument("--train-seed", type=int, default=None,
                   help="training seed of every model when it differs from --seed (the folds and the synthetic data "
                        "keep --seed): the same recipe trained again, to see how much a rerun moves the scores")
    p.add_argument("--fold-recipe", metavar="NAME",
                   help="the attention rows' recipe on the real folds (fine-tuning or from scratch) when it differs "
                        "from --recipe (the synthetic pretraining's), e.g. --recipe mixing_fraction --fold-recipe "
                        "default")
    p.add_argument("--link-from", type=Path, metavar="WORK",
                   help="a work folder whose real and synthetic caches (and synthetic fields) this --work folder links "
                        "to instead of making its own: the same cells for another recipe or setting")
    p.add_argument("--epochs", type=int, default=15, help="real training epochs per fold (default: %(default)s)")
    p.add_argument("--patience", type=int, default=8, help="real training early-stopping patience (default: %(default)s)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate, every row (default: %(default)s)")
    p.add_argument("--init-standardisation", choices=("keep", "recompute"), default="keep",
                   help="fine-tuned rows: keep the pretrained input standardisation or recompute it (default: %(default)s)")
    p.add_argument("--encoder", default="resnet10t", help="timm encoder of every model (default: %(default)s)")
    p.add_argument("--input-size", type=int, default=64, help="crop input size (default: %(default)s)")
    p.add_argument("--image-size", type=int, default=256, help="whole-field size of the image CNN (default: %(default)s)")
    p.add_argument("--max-cells", type=int, default=8, help="cells per training bag (default: %(default)s)")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s)")
    p.add_argument("--score-only", action="store_true",
                   help="run nothing: score the rows whose predictions the work folder holds and write the results "
                        "(safe beside a running benchmark on the same work folder)")
    return p.parse_args(argv)


# ----- stages: real caches, folds, synthetic pretraining ----------------------------------------------------


def real_caches(args: argparse.Namespace, fields: list, timings: dict) -> tuple[Path, Path]:
    """(the real cell cache, the real whole-field cache), segmented once (resumable)."""
    from hpa_cells.crops import CropConfig
    from hpa_cells_cli.segment import build_parser, build_segmenter
    from segmentation.whole_field import WholeFieldSegmenter

    cells, whole = args.work / "real_cells.h5", args.work / f"real_fields_{args.image_size}.h5"
    # segment.py's default segmenter; the fields come already at the 2018 scale (real_data.py shrinks the 2021
    # ones), so the Cellpose object sizes follow each field's working size as when these caches were first made
    cellpose = build_segmenter(build_parser().parse_args(["--images", ".", "--out", "x", "--working-size", "512"]))
    for path, segmenter, crop in ((cells, cellpose, CropConfig()),
                                  (whole, WholeFieldSegmenter(), CropConfig(crop_size=args.image_size,
                                                                            margin_fraction=0.0))):
        counts = segment_fields(fields, path, segmenter, crop)
        print(f"{path.name}: {counts}")
        if counts["segmented"]:
            timings[f"segment {path.name}"] = {**counts, "fields_per_second": round(
                counts["segmented"] / max(counts["seconds"], 1e-9), 3)}
    return cells, whole


def write_split_files(args: argparse.Namespace, fields: list) -> list[dict]:
    """The saved folds (made once) and one `train.py --split-file` per fold under the work folder."""
    folds = load_or_make_folds(args.folds_file, [f.image_id for f in fields], [f.labels for f in fields],
                               seed=args.seed)
    splits = fold_splits(folds)
    folder = args.work / "splits"
    folder.mkdir(parents=True, exist_ok=True)
    for split in splits:
        split["path"] = folder / f"fold{split['fold']}.json"
        content = {k: split[k] for k in ("fold", "train", "validation", "held_out")}
        split["path"].write_text(json.dumps(content, indent=1) + "\n")
    return splits


def synthetic_caches(args: argparse.Namespace, timings: dict) -> tuple[Path, Path]:
    """(synthetic cell cache, synthetic whole-field cache): fields generated and segmented as the demo does."""
    from hpa_cells.crops import CropConfig
    from hpa_cells.synthetic.dataset import SyntheticConfig, write_dataset
    from hpa_cells_cli.segment import build_parser, build_segmenter
    from segmentation.segment_to_cache import SegmentJob, segment_folder
    from segmentation.whole_field import WholeFieldSegmenter

    folder = args.work / "synthetic"
    started = time.time()
    config = SyntheticConfig.preset(args.synthetic_preset, seed=args.seed, size=512, balanced=True)
    summary = write_dataset(folder, args.synthetic_fields, config, show_progress=True)
    if summary.n_written:
        timings["synthetic generation"] = {"fields": summary.n_written, "seconds": round(time.time() - started, 1)}
    if args.synthetic_preset == "default":  # the demo's segmenter
        options = ["--diameter-tolerance", "0", "--cell-assembly", "flows", "--working-size", "512"]
    else:  # a preset imitating real fields is segmented as the real fields are
        options = ["--working-size", "512"]
    demo = build_segmenter(build_parser().parse_args(["--images", ".", "--out", "x", *options]))
    cells, whole = args.work / "synthetic_cells.h5", args.work / f"synthetic_fields_{args.image_size}.h5"
    for path, segmenter, crop in ((cells, demo, CropConfig()),
                                  (whole, WholeFieldSegmenter(), CropConfig(crop_size=args.image_size,
                                                                            margin_fraction=0.0))):
        job = SegmentJob(images_dir=folder, out_path=path, labels_path=folder / "train.csv", working_size=512,
                         crop=crop)
        result = segment_folder(job, segmenter)
        print(f"{path.name}: " + "; ".join(result.lines()[:2]))
        if result.images_done:
            timings[f"segment {path.name}"] = {"fields": result.images_done, "cells": result.cells_kept,
                                               "seconds": round(result.seconds, 1),
                                               "fields_per_second": round(result.images_per_second, 3)}
    return cells, whole


def stage_recipe(args: argparse.Namespace, stage: str) -> str:
    """The attention rows' recipe of a stage: "pretrain" (synthetic) takes --recipe, "folds" (the real folds)
    --fold-recipe when given, else --recipe."""
    recipe = getattr(args, "recipe", "default")
    return (getattr(args, "fold_recipe", None) or recipe) if stage == "folds" else recipe


def model_settings(kind: str, args: argparse.Namespace, stage: str = "pretrain"):
    """(model config, training config) of a kind of model, before the run-specific settings; an attention model
    follows its stage's recipe (`stage_recipe`)."""
    from mil.config import MILConfig
    from mil.training import TrainConfig

    train_seed = getattr(args, "train_seed", None)
    base = TrainConfig(epochs=args.epochs, learning_rate=args.lr, seed=args.seed if train_seed is None else train_seed,
                       device="cpu",
                       patience=args.patience, max_cells=args.max_cells)
    crop = MILConfig(encoder=args.encoder, input_size=args.input_size)
    if kind == "attention":
        return recipe_settings(crop, base, stage_recipe(args, stage))[:2]
    if kind == "mean":
        return replace(crop, head="mean"), base
    return (replace(crop, head="mean", input_size=args.image_size, use_mask_channel=False),
            replace(base, max_cells=1, exclude_flags=()))


def recipe_settings(model_config, train_config, recipe: str):
    """(model config, training config, self-training rounds) of an attention row under a weak-supervision recipe
    of bench_weak_supervision.py (its changes to the default, not its epochs or data)."""
    from bench_weak_supervision import RECIPES

    if recipe not in RECIPES or "cell_labels" in RECIPES[recipe][2]:
        usable = [name for name, (_, _, train) in RECIPES.items() if "cell_labels" not in train]
        raise RowError(f"--recipe {recipe}: not a weak-supervision recipe; choose one of {', '.join(usable)}")
    _, model_changes, train_changes = RECIPES[recipe]
    train_changes = {k: v for k, v in train_changes.items() if k not in ("self_training", "epochs")}
    return (replace(model_config, **model_changes), replace(train_config, **train_changes),
            int(RECIPES[recipe][2].get("self_training", 0)))


def train_row_model(kind: str, args: argparse.Namespace, cache: Path, folder: Path, model_config, train_config,
                    stage: str = "pretrain"):
    """Train one model of a row: by its stage's recipe's self-training rounds for an attention row, else plainly."""
    from mil.self_training import train_with_self_training
    from mil.training import train_model

    recipe = stage_recipe(args, stage)
    rounds = recipe_settings(model_config, train_config, recipe)[2] if kind == "attention" else 0
    if rounds:
        return train_with_self_training(cache, folder, model_config, train_config, rounds)
    return train_model(cache, folder, model_config, train_config)


def trained(folder: Path) -> bool:
    from mil.model_files import is_trained_model_folder

    return is_trained_model_folder(folder)


def pretrained_model(kind: str, args: argparse.Namespace, caches: dict, timings: dict) -> Path:
    """The model of `kind` trained on the synthetic fields only (trained once; resumable)."""

    if "synthetic" not in caches:
        caches["synthetic"] = synthetic_caches(args, timings)
    cells, whole = caches["synthetic"]
    folder = args.work / "models" / f"{kind}_pretrained"
    if trained(folder):
        return folder
    model_config, train_config = model_settings(kind, args)
    train_config = replace(train_config, epochs=args.synthetic_epochs, patience=100)
    print(f"pretraining {KIND_TITLES[kind]} on {args.synthetic_fields} synthetic fields -> {folder}")
    started = time.time()
    metrics = train_row_model(kind, args, whole if kind == "image" else cells, folder, model_config, train_config)
    timings[f"pretrain {kind}"] = {"epochs": metrics["epochs_run"], "train_seconds": metrics["train_seconds_this_run"],
                                   "seconds": round(time.time() - started, 1),
                                   "train_fields": metrics["n_train_images"]}
    return folder


# ----- rows -------------------------------------------------------------------------------------------------


def predict_fields(folder: Path, cache: Path, ids: list[str]):
    """(`len(ids),K` image probabilities, the model's `K` thresholds, ids the model could not predict: no usable
    cell; their probabilities are 0) of a model folder on the fields `ids` of `cache`."""
    import numpy as np

    from hpa_cells.classes import NUM_CLASSES
    from mil.inference import predict_cache
    from mil.model_folder import load_model

    predictions = predict_cache(load_model(folder), cache, show_progress=False, cell_score="cell")
    position = {image_id: i for i, image_id in enumerate(predictions.image_ids)}
    probs = np.zeros((len(ids), NUM_CLASSES))
    for j, image_id in enumerate(ids):
        if image_id in position:
            probs[j] = predictions.image_probs[position[image_id]]
    return probs, np.asarray(predictions.thresholds, dtype=np.float64), [i for i in ids if i not in position]


def prior_row(splits: list[dict], labels: dict) -> dict:
    """Every held-out field scored with the class frequencies of its fold's training fields; thresholds fitted
    on those training fields (`mil.thresholds.fit_thresholds`, as a model's are)."""
    import numpy as np

    from hpa_cells.labels import to_multi_hot
    from mil.thresholds import fit_thresholds

    out = {"image_ids": [], "probs": [], "pred": [], "folds": []}
    for split in splits:
        training = to_multi_hot([labels[i] for i in split["train"] + split["validation"]])
        frequency = training.mean(axis=0)
        thresholds = fit_thresholds(np.tile(frequency, (len(training), 1)), training)
        for image_id in split["held_out"]:
            out["image_ids"].append(image_id)
            out["probs"].append(frequency.tolist())
            out["pred"].append((frequency >= thresholds).astype(int).tolist())
        out["folds"].append({"fold": split["fold"], "train_fields": len(training)})
    return out


def init_settings(train_config, pretrained: Path, args: argparse.Namespace):
    """`train_config` starting from the model folder `pretrained` (`train.py --init`); RowError when this checkout's
    TrainConfig has no `init_from` yet."""
    from mil.training import TrainConfig

    if "init_from" not in TrainConfig.__dataclass_fields__:
        raise RowError("needs train.py --init (TrainConfig.init_from, PLAN13's fine-tuning by helper finetune), "
                       "which this checkout does not have yet")
    return replace(train_config, init_from=str(pretrained), init_standardisation=args.init_standardisation)


def fold_row(row: str, args: argparse.Namespace, splits: list[dict], caches: dict, timings: dict) -> dict:
    """A trained row: per fold, a model trained on the fold's training fields (from scratch or from the synthetic
    model) predicts the held-out fields; a `synthetic` row predicts every field with the pretrained model."""

    kind, start = row.split("_")
    cells, whole = caches["real"]
    cache = whole if kind == "image" else cells
    model_config, base = model_settings(kind, args, "folds")
    if start == "finetuned":
        init_settings(base, args.work, args)  # fails early, before any pretraining, when --init is missing
    pretrained = pretrained_model(kind, args, caches, timings) if start != "real" else None
    out = {"image_ids": [], "probs": [], "pred": [], "folds": [], "missing_fields": []}
    for split in splits:
        folder = pretrained
        if start != "synthetic":
            folder = args.work / "models" / row / f"fold{split['fold']}"
            train_config = replace(base, split_file=str(split["path"]))
            if start == "finetuned":
                train_config = init_settings(train_config, pretrained, args)
            if not trained(folder):
                print(f"{row}: fold {split['fold']}: training -> {folder}")
                train_row_model(kind, args, cache, folder, model_config, train_config, "folds")
        probs, thresholds, missing = predict_fields(folder, cache, split["held_out"])
        out["image_ids"] += split["held_out"]
        out["probs"] += probs.tolist()
        out["pred"] += (probs >= thresholds).astype(int).tolist()
        out["missing_fields"] += missing
        out["folds"].append(fold_record(split["fold"], folder, start))
    return out


def fold_record(fold: int, folder: Path, start: str) -> dict:
    """What a fold's model did (from its metrics.json); a synthetic row's model saw no real field."""
    metrics = json.loads((folder / "metrics.json").read_text())
    record = {"fold": fold, "model": str(folder)}
    if start != "synthetic":
        record.update({k: metrics[k] for k in ("epochs_run", "best_epoch", "n_train_images", "n_val_images",
                                               "train_seconds_this_run", "train_cells_per_second")})
    return record


def run_row(row: str, args: argparse.Namespace, splits: list[dict], labels: dict, caches: dict,
            timings: dict) -> None:
    """Run one row and save its pooled predictions (work/predictions/ROW.json)."""
    started = time.time()
    out = prior_row(splits, labels) if row == "prior" else fold_row(row, args, splits, caches, timings)
    out.update(row=row, seconds=round(time.time() - started, 1))
    path = args.work / "predictions" / f"{row}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out) + "\n")
    print(f"{row}: done in {out['seconds']:.0f} s -> {path}")


# ----- scoring and the table ----------------------------------------------------------------------------------


def pooled(args: argparse.Namespace, row: str, ids: list[str]):
    """(saved predictions of a row, `N,K` scores and `N,K` predictions in `ids` order) or None if not run."""
    import numpy as np

    path = args.work / "predictions" / f"{row}.json"
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    position = {image_id: i for i, image_id in enumerate(saved["image_ids"])}
    if sorted(position) != sorted(ids):
        raise RuntimeError(f"{path} holds predictions of other fields than these folds: delete it to rerun the row")
    order = [position[i] for i in ids]
    return saved, np.asarray(saved["probs"])[order], np.asarray(saved["pred"])[order]


def _variants(args: argparse.Namespace) -> list[tuple[str, Path]]:
    """--variant NAME=WORK options as (name, work folder); a malformed one or a missing folder stops the run."""
    out = []
    for text in args.variant:
        name, _, work = text.partition("=")
        if not name or not work or not Path(work).is_dir():
            raise SystemExit(f"--variant {text!r}: expected NAME=WORK with WORK an existing bench_real work folder")
        out.append((name, Path(work)))
    return out


def score_rows(args: argparse.Namespace, fields: list, status: dict) -> dict:
    """Every row with saved predictions scored with bootstrap intervals, the paired comparisons, and the status
    of the rows without predictions."""
    from hpa_cells.classes import CLASS_NAMES
    from hpa_cells.labels import to_multi_hot
    from hpa_cells.metrics import bootstrap_image_metrics, paired_bootstrap_image_metrics

    ids = [f.image_id for f in fields]
    y = to_multi_hot([f.labels for f in fields])
    rows, arrays = {}, {}

    def scored(title: str, saved: dict, probs, pred) -> tuple[dict, object]:
        """A row's entry (title, bootstrap metrics, its run's seconds and folds) and the bootstrap itself."""
        boot = bootstrap_image_metrics(y, probs, pred, resamples=args.resamples, seed=args.seed)
        return {"title": title, "status": "done", "metrics": {k: v.to_dict() for k, v in boot.metrics.items()},
                "seconds": saved["seconds"], "folds": saved["folds"]}, boot

    for row in ROWS:
        found = pooled(args, row, ids)
        if found is None:
            rows[row] = {"title": row_title(row), "status": status.get(row, "not run")}
            continue
        saved, probs, pred = found
        arrays[row] = (probs, pred)
        rows[row], boot = scored(row_title(row), saved, probs, pred)
        rows[row].update(per_class_ap={CLASS_NAMES[c]: v.to_dict() for c, v in boot.per_class_ap.items()},
                         fields_without_prediction=saved.get("missing_fields", []))
    comparisons = {}
    for a, b in COMPARISONS:
        if a in arrays and b in arrays:
            diff = paired_bootstrap_image_metrics(y, arrays[a], arrays[b], resamples=args.resamples, seed=args.seed)
            comparisons[f"{b} - {a}"] = {k: v.to_dict() for k, v in diff.items()}
    for name, work in _variants(args):
        for row in ROWS:
            found = pooled(argparse.Namespace(work=work), row, ids)
            if found is None or row not in arrays:
                continue
            saved, probs, pred = found
            key = f"{row}@{name}"
            rows[key] = scored(f"{row_title(row)} [{name}: {work}]", saved, probs, pred)[0]
            diff = paired_bootstrap_image_metrics(y, arrays[row], (probs, pred), resamples=args.resamples,
                                                  seed=args.seed)
            comparisons[f"{key} - {row}"] = {k: v.to_dict() for k, v in diff.items()}
    classes = [int(c) for c in (y.sum(axis=0) >= 3).nonzero()[0]]
    return {"rows": rows, "comparisons": comparisons, "n_fields": len(ids),
            "classes_evaluated": [CLASS_NAMES[c] for c in classes],
            "positive_fields_per_class": {CLASS_NAMES[c]: int(y[:, c].sum()) for c in classes}}


def machine() -> str:
    import torch

    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return (f"{platform.node()}, {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores, "
            f"Python {platform.python_version()}, torch {torch.__version__}, {torch.get_num_threads()} torch threads, "
            f"load average {load}")


def _interval(entry: dict) -> str:
    return f"{entry['value']:.3f} [{entry['low']:.3f}, {entry['high']:.3f}]"


def print_table(results: dict) -> None:
    print(f"\n{results['n_fields']} real fields, 5-fold CV, predictions pooled; mAP and macro F1 over "
          f"{len(results['classes_evaluated'])} classes with >= 3 positive fields; [95% bootstrap interval]\n")
    print("| row | image mAP | macro F1 | micro F1 | seconds | epochs run per fold |")
    print("|---|---|---|---|---|---|")
    for entry in results["rows"].values():
        if entry["status"] != "done":
            print(f"| {entry['title']} | {entry['status']} | | | | |")
            continue
        m = entry["metrics"]
        epochs = "/".join(str(f["epochs_run"]) for f in entry["folds"] if "epochs_run" in f) or "-"
        print(f"| {entry['title']} | {_interval(m['map'])} | {_interval(m['macro_f1'])} | {_interval(m['micro_f1'])} "
              f"| {entry['seconds']:.0f} | {epochs} |")
    if results["comparisons"]:
        print("\n| paired difference (B - A) | image mAP | share B > A | macro F1 | micro F1 |")
        print("|---|---|---|---|---|")
        for name, diff in results["comparisons"].items():
            d = {k: f"{v['difference']:+.3f} [{v['low']:+.3f}, {v['high']:+.3f}]" for k, v in diff.items()}
            print(f"| {name} | {d['map']} | {diff['map']['share_b_better']:.2f} | {d['macro_f1']} | {d['micro_f1']} |")


def _load_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def link_caches(args: argparse.Namespace) -> None:
    """--link-from: symbolic links in --work to the other work folder's caches and synthetic fields (kept if they
    exist already)."""
    names = ("real_cells.h5", f"real_fields_{args.image_size}.h5", "synthetic", "synthetic_cells.h5",
             f"synthetic_fields_{args.image_size}.h5")
    for name in names:
        source, link = args.link_from.resolve() / name, args.work / name
        if not source.exists():
            raise RowError(f"--link-from {args.link_from}: {source} does not exist")
        if not link.exists() and not link.is_symlink():
            link.symlink_to(source)


def run_rows(args: argparse.Namespace, fields: list, timings: dict, status: dict) -> None:
    """The real caches, the split files, then each asked row not yet done; `timings` and `status` (row -> why it
    did not run) are updated and saved after every row."""
    if args.link_from is not None:
        link_caches(args)
    caches = {"real": real_caches(args, fields, timings)}
    splits = write_split_files(args, fields)
    labels = {f.image_id: f.labels for f in fields}
    for row in args.rows:
        if (args.work / "predictions" / f"{row}.json").is_file():
            print(f"{row}: reusing the saved predictions")
            continue
        print(f"\n== {row}: {row_title(row)}", flush=True)
        try:
            run_row(row, args, splits, labels, caches, timings)
            status.pop(row, None)
        except RowError as err:
            status[row] = f"not run: {err}"
            print(f"{row}: {status[row]}")
        except Exception as err:  # one failed row must not stop the others; the traceback is printed
            traceback.print_exc()
            status[row] = f"failed: {type(err).__name__}: {err}"
        (args.work / "timings.json").write_text(json.dumps(timings, indent=1) + "\n")
        (args.work / "status.json").write_text(json.dumps(status, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    """Run the stages and rows (or, with --score-only, none); 0 when every asked row has predictions, 1 when a row
    failed or could not run, 2 for missing real data or folds that do not fit it."""
    args = parse_args(argv)
    import logging

    import torch

    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the training loop's per-epoch lines
    torch.set_num_threads(args.threads)
    started, machine_at_start = time.time(), machine()
    args.work.mkdir(parents=True, exist_ok=True)
    timings, status = _load_json(args.work / "timings.json"), _load_json(args.work / "status.json")
    try:
        fields = find_real_fields(args.data)
        if args.score_only:  # the saved folds are only read (and checked against the fields)
            load_or_make_folds(args.folds_file, [f.image_id for f in fields], [f.labels for f in fields],
                               seed=args.seed)
        else:
            run_rows(args, fields, timings, status)
    except (RealDataError, FoldsFileError, RowError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    results = score_rows(args, fields, status)
    results.update(date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), machine=machine_at_start,
                   machine_at_end=machine(), command="python benchmarks/bench_real.py " + " ".join(argv or sys.argv[1:]),
                   seconds_this_run=round(time.time() - started, 1), timings=timings,
                   settings={k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                   folds_file=str(args.folds_file))
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=1) + "\n")
    print_table(results)
    return 1 if not args.score_only and any(row in status for row in args.rows) else 0

if __name__ == "__main__":
    sys.exit(main())
