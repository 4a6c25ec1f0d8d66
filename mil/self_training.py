"""Cell-level self-training: a trained MIL model's confident cells become per-cell targets for the next model.

The 2021 HPA single-cell winners trained on image labels, then relabelled cells with their own predictions and
trained again. Round 0 is the MIL model from image labels; each round after it predicts the training images'
cells with the previous round's model, turns them into pseudo-labels with the image labels as a constraint
(`mil.pseudo_labels.make_pseudo_labels`), and trains a new model from scratch on the same images and split with
the image loss plus `pseudo_label_weight` x BCE on the known cell targets
(`mil.training.losses.pseudo_label_loss`). Every round lives in its own folder and finished rounds are reused.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import pandas as pd

from hpa_cells.atomic_files import write_json_atomic
from hpa_cells.cache import CellCache
from mil.model_files import is_trained_model_folder
from mil.pseudo_labels import PseudoLabelRule, make_pseudo_labels, pseudo_label_summary, write_pseudo_labels

logger = logging.getLogger(__name__)

DEFAULT_ROUNDS = 1
"""Self-training rounds of the default recipe (`train.py --self-training-rounds auto` for a crop-family run from
image labels). On the MIL benchmark (10 epochs, paired bootstrap over the 164 validation images) one round raised the
gated cell mAP from 0.405 to 0.440 (+0.035 [+0.022, +0.049]) and, on top of mixing bags (the default recipe), from
0.476 to 0.503 (+0.028 [+0.008, +0.048]), for twice the training; a second round added +0.004 [-0.009, +0.019]
(BENCHMARKS.md "Weak supervision")."""


def label_cells(model_folder: Path, cache_path: Path, train_ids: list[str], rule: PseudoLabelRule,
                device: str = "cpu", labels_path: str | None = None) -> pd.DataFrame:
    """The pseudo-labels of the training images' cells from the model in `model_folder` (its cells' own
    probabilities over `cache_path`); image labels from the cache, or from `labels_path` (`train.py --labels`)."""
    from mil.inference import bags_from_cache, model_exclude_flags, predict_bags
    from mil.model_folder import load_model
    from mil.training.resume import label_override

    loaded = load_model(model_folder)
    bags = bags_from_cache(cache_path, model_exclude_flags(loaded), image_ids=train_ids)
    predictions = predict_bags(loaded, bags, device=device, show_progress=True, total=len(set(train_ids)),
                               cell_score="cell")
    with CellCache(cache_path) as cache:
        labels = label_override(cache, labels_path)[0] if labels_path is not None else cache.labels
        position = {image_id: i for i, image_id in enumerate(cache.image_ids)}
        image_labels = {image_id: labels[position[image_id]] for image_id in train_ids}
    return make_pseudo_labels(predictions.cells, image_labels, rule)


def _remove_rounds(out_dir: Path) -> None:
    """--overwrite: the earlier rounds' folders go, so every round trains again."""
    import shutil

    for folder in sorted(out_dir.glob("round*")):
        if folder.is_dir():
            shutil.rmtree(folder)
            logger.info("--overwrite: removed %s", folder)


def _round_pseudo_labels(r: int, previous: Path, cache_path: Path, out_dir: Path, config, rule: PseudoLabelRule,
                         ranks) -> Path:
    """Round r's pseudo-label file, made from the previous round's model unless it exists (by rank 0 only; the
    other ranks wait for it)."""
    from mil.training.distributed import barrier

    pseudo = out_dir / f"round{r}" / "pseudo_labels.csv"
    if not pseudo.is_file() and ranks.main:
        train_ids = json.loads((previous / "metrics.json").read_text())["train_image_ids"]
        labels = label_cells(previous, cache_path, train_ids, rule, config.device, config.labels)
        pseudo.parent.mkdir(parents=True, exist_ok=True)
        write_pseudo_labels(labels, pseudo)
    barrier(ranks)
    return pseudo


def train_with_self_training(cache_path: Path, out_dir: Path, model_config, config, rounds: int,
                             rule: PseudoLabelRule | None = None, overwrite: bool = False) -> dict:
    """Round 0 (the MIL model from image labels) in `out_dir/round0`, then `rounds` self-training rounds, round r
    in `out_dir/round{r}` with its `pseudo_labels.csv`; the last round's model folder is `out_dir` itself.
    Finished earlier rounds are reused, so rerunning continues; the last round follows `train_model`'s rules for
    a finished folder (refused; continued with more epochs; `overwrite` removes every round and trains them all
    again). Under torchrun every rank calls this; rank 0 makes the pseudo-labels. Returns the last round's metrics
    with the rounds' pseudo-label counts and training seconds in `self_training` (also `out_dir/self_training.json`)."""
    from mil.training import train_model
    from mil.training.distributed import barrier, current_ranks

    rule = rule or PseudoLabelRule()
    if getattr(model_config, "family", "crop") != "crop":
        raise ValueError(f"self-training trains crop-family models (per-cell targets of cell crops), not "
                         f"{model_config.family}")
    if rounds < 1:
        raise ValueError(f"self-training needs at least 1 round after the MIL model, got {rounds}")
    ranks = current_ranks()
    if overwrite and ranks.main:
        _remove_rounds(out_dir)
    barrier(ranks)
    record, previous = [], None
    for r in range(rounds + 1):
        final = r == rounds
        folder = out_dir if final else out_dir / f"round{r}"
        round_config, entry = config, {"round": r, "folder": str(folder)}
        if r > 0:
            pseudo = _round_pseudo_labels(r, previous, cache_path, out_dir, config, rule, ranks)
            entry["pseudo_labels"] = pseudo_label_summary(pd.read_csv(pseudo, dtype=str, keep_default_na=False))
            logger.info("self-training round %d: %s", r, entry["pseudo_labels"])
            round_config = replace(config, pseudo_labels=str(pseudo))
        if not final and is_trained_model_folder(folder):
            metrics = json.loads((folder / "metrics.json").read_text())
        else:
            metrics = train_model(cache_path, folder, model_config, round_config, overwrite=overwrite and final)
        entry["train_seconds"] = metrics.get("train_seconds_this_run")
        record.append(entry)
        previous = folder
    summary = {"rounds": rounds, "rule": {"positive_ratio": rule.positive_ratio,
                                          "negative_ratio": rule.negative_ratio}, "per_round": record}
    if ranks.main:
        write_json_atomic(out_dir / "self_training.json", summary, indent=1)
    barrier(ranks)
    return {**metrics, "self_training": summary}
