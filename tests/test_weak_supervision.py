"""Issue 15's weak-supervision candidates: the top-k and pseudo-label losses, the dual-stream head, pseudo-labels
and their file, and self-training rounds end to end."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from mil_fixtures import green_marker_bags, write_bag_cache, write_cell_labels

from hpa_cells.cache import CellCache
from hpa_cells.classes import CLASS_NAMES, NUM_CLASSES
from mil.config import MILConfig
from mil.model import MILOutput
from mil.pooling import create_head
from mil.pseudo_labels import (
    PseudoLabelError,
    PseudoLabelRule,
    make_pseudo_labels,
    pseudo_label_matrix,
    pseudo_label_summary,
    read_pseudo_labels,
    write_pseudo_labels,
)
from mil.self_training import train_with_self_training
from mil.training import TrainConfig
from mil.training.config import TrainingError
from mil.training.losses import batch_loss, pseudo_label_loss, topk_instance_loss

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY_MODEL = MILConfig(encoder="test_resnet", head="class_gated_attention", input_size=16, dropout=0.0)
FAST = TrainConfig(epochs=2, batch_size=4, max_cells=4, learning_rate=3e-3, seed=3, device="cpu", val_fraction=0.25)


# ----- losses ---------------------------------------------------------------------------------------------

def test_topk_loss_pulls_up_the_best_real_cells_of_present_classes_only() -> None:
    cell_logits = torch.tensor([[[2.0, -1.0], [0.5, 3.0], [9.0, 9.0]],
                                [[-2.0, 1.0], [0.0, 0.0], [0.0, 0.0]]])  # B=2, N=3, K=2
    valid = torch.tensor([[True, True, False], [True, False, False]])  # padding holds the large logits
    labels = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    # k=1: image 0 class 0 -> 2.0; image 1 classes 0 and 1 -> its only cell: -2.0, 1.0
    expected = F.softplus(-torch.tensor([2.0, -2.0, 1.0])).mean()  # BCE(logit, 1) = softplus(-logit)
    assert torch.allclose(topk_instance_loss(cell_logits, valid, labels, 1), expected)
    # k=2: image 0 class 0 -> 2.0 and 0.5; image 1 has one real cell, counted once per class
    expected2 = F.softplus(-torch.tensor([2.0, 0.5, -2.0, 1.0])).mean()
    assert torch.allclose(topk_instance_loss(cell_logits, valid, labels, 2), expected2)
    assert float(topk_instance_loss(cell_logits, valid, torch.zeros(2, 2), 1)) == 0.0


def test_pseudo_label_loss_leaves_out_unknown_entries_and_padding() -> None:
    cell_logits = torch.tensor([[[1.0, -2.0], [0.5, 4.0], [7.0, 7.0]]])
    valid = torch.tensor([[True, True, False]])
    nan = float("nan")
    targets = torch.tensor([[[1.0, nan], [0.0, 1.0], [1.0, 1.0]]])
    expected = torch.stack([F.softplus(torch.tensor(-1.0)), F.softplus(torch.tensor(0.5)),
                            F.softplus(torch.tensor(-4.0))]).mean()
    assert torch.allclose(pseudo_label_loss(cell_logits, valid, targets), expected)
    assert float(pseudo_label_loss(cell_logits, valid, torch.full_like(targets, nan))) == 0.0


def test_batch_loss_adds_each_term_with_its_weight() -> None:
    torch.manual_seed(0)
    output = MILOutput(torch.randn(2, 3), torch.randn(2, 4, 3), torch.rand(2, 4))
    batch = type("Batch", (), {"valid": torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool),
                               "labels": torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])})()
    targets = torch.where(torch.rand(2, 4, 3) > 0.5, torch.tensor(1.0), torch.tensor(float("nan")))
    base = TrainConfig(negative_cell_weight=0.0)
    image = float(batch_loss(output, batch, None, base, None))
    assert image == pytest.approx(float(F.binary_cross_entropy_with_logits(output.image_logits, batch.labels)))
    topk = float(topk_instance_loss(output.cell_logits, batch.valid, batch.labels, 2))
    with_topk = float(batch_loss(output, batch, None, replace(base, topk_cells=2, topk_weight=0.5), None))
    assert with_topk == pytest.approx(image + 0.5 * topk)
    pseudo = float(pseudo_label_loss(output.cell_logits, batch.valid, targets))
    config = replace(base, pseudo_labels="p.csv", pseudo_label_weight=2.0)
    assert float(batch_loss(output, batch, targets, config, None)) == pytest.approx(image + 2.0 * pseudo)


@pytest.mark.parametrize(("changes", "message"), [
    ({"topk_cells": -1}, "topk_cells, topk_weight and pseudo_label_weight must be >= 0, got -1, 1.0, 1.0"),
    ({"pseudo_labels": "a.csv", "cell_labels": "b.csv"},
     re.escape("pseudo-labels (pseudo_labels) and per-cell labels (cell_labels) exclude each other")),
    ({"mosaic_fraction": 0.25, "mosaic_bags": 4},
     re.escape("mosaic_fraction must be in [0, 4] and exclude mosaic_bags, got 0.25 with mosaic_bags 4")),
    ({"mosaic_fraction": -0.1}, re.escape("mosaic_fraction must be in [0, 4] and exclude mosaic_bags, got -0.1")),
])
def test_config_refuses_contradictions(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig(**changes)


# ----- the dual-stream head -------------------------------------------------------------------------------

def test_dual_stream_image_logit_is_the_mean_of_its_max_and_bag_streams() -> None:
    torch.manual_seed(0)
    head = create_head("dual_stream", in_features=6, num_classes=3).eval()
    embeddings = torch.randn(2, 5, 6)
    valid = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=torch.bool)
    out = head(embeddings, valid)
    cell_logits = head.classifier(embeddings)
    max_stream = cell_logits.masked_fill(~valid.unsqueeze(-1), -1e9).max(dim=1).values
    bag = torch.einsum("bnk,bnd->bkd", out.attention, head.value(embeddings))
    bag_stream = (bag * head.bag_weight).sum(-1) + head.classifier.bias
    torch.testing.assert_close(out.image_logits, (max_stream + bag_stream) / 2)
    # the critical cell of each class (the best cell) attends to itself at least as much as any cell does
    queries = head.query(embeddings)
    critical = cell_logits.masked_fill(~valid.unsqueeze(-1), -1e9).argmax(dim=1)  # B,K
    for b in range(2):
        for k in range(3):
            q = queries[b, critical[b, k]]
            scores = (queries[b] @ q).masked_fill(~valid[b], -1e9)
            assert int(scores.argmax()) == int(out.attention[b, :, k].argmax())


# ----- pseudo-labels --------------------------------------------------------------------------------------

def _cells(probabilities: dict[str, list[list[float]]]) -> pd.DataFrame:
    """A cell table with the class-probability columns: image id -> per cell the probabilities of classes 0-1."""
    rows = []
    for image_id, cells in probabilities.items():
        for cell_id, (p0, p1) in enumerate(cells, start=1):
            probs = np.zeros(NUM_CLASSES)
            probs[:2] = p0, p1
            rows.append({"image_id": image_id, "cell_id": cell_id, **dict(zip(CLASS_NAMES, probs, strict=True))})
    return pd.DataFrame(rows)


def test_pseudo_labels_follow_the_image_labels_and_the_ratio_rule() -> None:
    cells = _cells({"a": [[0.8, 0.9], [0.5, 0.1], [0.1, 0.05]], "b": [[0.02, 0.3], [0.015, 0.2]],
                    "c": [[0.9, 0.9]]})
    labels = {"a": np.eye(NUM_CLASSES)[0], "b": np.eye(NUM_CLASSES)[0]}  # c is not a training image
    table = make_pseudo_labels(cells, labels, PseudoLabelRule(positive_ratio=0.5, negative_ratio=0.2))
    assert list(table.columns) == ["image_id", "cell_id", "labels", "uncertain"]
    # a, class 0 (max 0.8): 0.8 -> 1, 0.5 >= 0.4 -> 1, 0.1 <= 0.16 -> 0; class 1 absent -> 0 everywhere
    # b, class 0 (max 0.02, however low): 0.02 -> 1, 0.015 >= 0.01 -> 1; class 1's 0.3 is absent -> 0
    assert table.values.tolist() == [["a", 1, "0", ""], ["a", 2, "0", ""], ["a", 3, "", ""],
                                     ["b", 1, "0", ""], ["b", 2, "0", ""]]
    uncertain = make_pseudo_labels(_cells({"a": [[0.8, 0.0], [0.3, 0.0]]}), {"a": np.eye(NUM_CLASSES)[0]})
    assert uncertain.values.tolist() == [["a", 1, "0", ""], ["a", 2, "", "0"]]  # 0.16 < 0.3 < 0.4
    assert pseudo_label_summary(table) == {"cells": 5, "cells_with_a_positive": 4, "positive_entries": 4,
                                           "unknown_entries": 0}
    with pytest.raises(ValueError, match=re.escape("pseudo-label ratios must satisfy 0 <= negative_ratio < "
                                                   "positive_ratio <= 1, got 0.6 and 0.5")):
        PseudoLabelRule(positive_ratio=0.5, negative_ratio=0.6)


def test_pseudo_label_file_round_trips_into_a_matrix_with_unknowns(tmp_path: Path) -> None:
    bags = green_marker_bags(3, seed=0, min_cells=2, max_cells=2)
    cache = write_bag_cache(tmp_path / "cells.h5", bags)
    table = pd.DataFrame([["sq000", 1, "0 5", "1"], ["sq000", 2, "", ""], ["sq001", 1, "", "0"],
                          ["sq001", 2, "27", ""]], columns=["image_id", "cell_id", "labels", "uncertain"])
    path = tmp_path / "pseudo.csv"
    write_pseudo_labels(table, path)
    assert read_pseudo_labels(path)[("sq000", 1)] == ([0, 5], [1])
    with CellCache(cache) as opened:
        matrix = pseudo_label_matrix(opened, path, [0, 1])
    assert matrix.shape == (6, NUM_CLASSES)
    assert matrix[0, 0] == 1 and matrix[0, 5] == 1 and np.isnan(matrix[0, 1]) and matrix[0, 2] == 0
    assert (matrix[1] == 0).all()
    assert np.isnan(matrix[2, 0]) and np.nansum(matrix[2]) == 0 and matrix[3, 27] == 1
    assert np.isnan(matrix[4:]).all()  # image 2 is not a training image: never trained on
    with CellCache(cache) as opened, pytest.raises(PseudoLabelError, match=re.escape(
            f"{path} has no row for cell 1 of image 'sq002' in {cache}; make the pseudo-labels from this cache")):
        pseudo_label_matrix(opened, path, [2])


@pytest.mark.parametrize(("text", "message"), [
    ("image_id,cell_id,labels\n", "missing column(s) uncertain; expected image_id, cell_id, labels, uncertain"),
    ("image_id,cell_id,labels,uncertain\na,1,3 x,\n", "line 2: class ids must be integers, got '3 x'"),
    ("image_id,cell_id,labels,uncertain\na,1,,28\n", "line 2: class id 28 is outside 0..27"),
    ("image_id,cell_id,labels,uncertain\na,one,,\n", "line 2: cell_id must be an integer, got 'one'"),
])
def test_bad_pseudo_label_files_name_the_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "pseudo.csv"
    path.write_text(text)
    separator = " " if message.startswith("line") else ": "
    with pytest.raises(PseudoLabelError, match=re.escape(f"{path}{separator}{message}")):
        read_pseudo_labels(path)


# ----- self-training end to end ---------------------------------------------------------------------------

def test_self_training_round_trains_on_its_pseudo_labels_and_resumes(tmp_path: Path) -> None:
    cache = write_bag_cache(tmp_path / "cells.h5", green_marker_bags(16, seed=0))
    out = tmp_path / "model"
    metrics = train_with_self_training(cache, out, TINY_MODEL, FAST, rounds=1)
    first = json.loads((out / "round0" / "metrics.json").read_text())
    assert first["train_image_ids"] == metrics["train_image_ids"]  # the same split every round
    pseudo = pd.read_csv(out / "round1" / "pseudo_labels.csv", dtype=str, keep_default_na=False)
    with CellCache(cache) as opened:
        cells = opened.cell_table()
        train_cells = cells[cells["image_id"].isin(set(first["train_image_ids"]))]
        labels = {i: opened.labels[opened.image_ids.index(i)] for i in first["train_image_ids"]}
    assert sorted(zip(pseudo["image_id"], pseudo["cell_id"].astype(int), strict=True)) == sorted(
        zip(train_cells["image_id"], train_cells["cell_id"].astype(int), strict=True))
    for image_id, frame in pseudo.groupby("image_id"):  # the image labels constrain every cell
        present = set(np.flatnonzero(labels[image_id]))
        positives = [set(map(int, v.split())) for v in frame["labels"]]
        assert all(p <= present for p in positives)
        assert set().union(*positives) == present  # every class the image has: at least its best cell
    summary = json.loads((out / "self_training.json").read_text())
    assert [r["round"] for r in summary["per_round"]] == [0, 1]
    assert summary["per_round"][1]["pseudo_labels"]["cells"] == len(train_cells)
    assert (out / "weights.safetensors").is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["training"]["pseudo_labels"] == str(out / "round1" / "pseudo_labels.csv")
    first_weights = (out / "round0" / "weights.safetensors").stat().st_mtime_ns
    with pytest.raises(TrainingError, match=re.escape(f"{out} holds a finished model")):  # as a plain run's folder
        train_with_self_training(cache, out, TINY_MODEL, FAST, rounds=1)
    more = train_with_self_training(cache, out, TINY_MODEL, replace(FAST, epochs=3), rounds=1)
    assert more["epochs_run"] == 3  # more --epochs continue the last round; the earlier rounds are reused
    assert (out / "round0" / "weights.safetensors").stat().st_mtime_ns == first_weights
    assert json.loads((out / "round0" / "metrics.json").read_text())["epochs_run"] == 2
    (out / "round1" / "pseudo_labels.csv").write_text("stale\n")
    again = train_with_self_training(cache, out, TINY_MODEL, FAST, rounds=1, overwrite=True)  # every round again
    assert again["epochs_run"] == 2
    assert pd.read_csv(out / "round1" / "pseudo_labels.csv").shape[0] == len(train_cells)
    with pytest.raises(ValueError, match="self-training needs at least 1 round after the MIL model, got 0"):
        train_with_self_training(cache, tmp_path / "none", TINY_MODEL, FAST, rounds=0)


# ----- train.py ---------------------------------------------------------------------------------------------

TINY_ARGS = ["--encoder", "test_resnet", "--input-size", "16", "--batch-size", "4", "--max-cells", "4", "--lr",
             "3e-3", "--epochs", "1", "--val-fraction", "0.25", "--device", "cpu"]


def test_train_command_runs_self_training_with_the_cell_terms(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from hpa_cells_cli import train as train_command

    cache = write_bag_cache(tmp_path / "cells.h5", green_marker_bags(12, seed=1))
    out = tmp_path / "model"
    assert train_command.main(["--cache", str(cache), "--out", str(out), *TINY_ARGS, "--self-training-rounds", "1",
                               "--topk-cells", "2", "--topk-weight", "0.5", "--negative-cell-weight", "1"]) == 0
    printed = capsys.readouterr().out
    pseudo = out / "round1" / "pseudo_labels.csv"
    assert f"self-training round 1: pseudo-labels for {len(pd.read_csv(pseudo))} cells" in printed
    training = json.loads((out / "config.json").read_text())["training"]
    assert (training["topk_cells"], training["topk_weight"], training["negative_cell_weight"]) == (2, 0.5, 1.0)
    assert training["pseudo_labels"] == str(pseudo)
    assert json.loads((out / "round0" / "config.json").read_text())["training"]["pseudo_labels"] is None


@pytest.mark.parametrize(("options", "message"), [
    (["--family", "dense", "--topk-cells", "1"], "--topk-cells applies to --family crop only"),
    (["--family", "dense", "--self-training-rounds", "1"], "--self-training-rounds applies to --family crop only"),
    (["--pseudo-negative-ratio", "0.6"], "--pseudo-negative-ratio 0.6 must be below --pseudo-positive-ratio 0.5"),
    (["--self-training-rounds", "1", "--pseudo-negative-ratio", "0.5"],
     "--pseudo-negative-ratio 0.5 must be below --pseudo-positive-ratio 0.5"),
    (["--self-training-rounds", "1", "--cell-labels", "cells.csv"],
     "--self-training-rounds cannot be combined with --cell-labels (the cells already have labels)"),
])
def test_train_command_refuses_impossible_weak_supervision_options(tmp_path: Path, options: list[str], message: str,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from hpa_cells_cli import train as train_command

    cache = write_bag_cache(tmp_path / "cells.h5", green_marker_bags(4, seed=1))
    assert train_command.main(["--cache", str(cache), "--out", str(tmp_path / "m"), *TINY_ARGS, *options]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"
    assert not (tmp_path / "m" / "weights.safetensors").exists()


def test_loss_weight_options_must_be_non_negative_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    from hpa_cells_cli import train as train_command

    with pytest.raises(SystemExit):
        train_command.main(["--cache", "c.h5", "--out", "o", "--topk-weight", "-1"])
    assert "argument --topk-weight: must be a number >= 0, got -1" in capsys.readouterr().err


def test_the_default_command_self_trains_a_crop_run_and_auto_stays_off_where_it_cannot_apply(tmp_path: Path) -> None:
    from hpa_cells_cli import train as train_command
    from mil.self_training import DEFAULT_ROUNDS

    cache = write_bag_cache(tmp_path / "cells.h5", green_marker_bags(12, seed=2))
    assert train_command.main(["--cache", str(cache), "--out", str(tmp_path / "default"), *TINY_ARGS]) == 0
    summary = json.loads((tmp_path / "default" / "self_training.json").read_text())
    assert summary["rounds"] == DEFAULT_ROUNDS and (tmp_path / "default" / "round0" / "weights.safetensors").is_file()
    assert train_command.main(["--cache", str(cache), "--out", str(tmp_path / "plain"), *TINY_ARGS,
                               "--self-training-rounds", "0"]) == 0
    assert (tmp_path / "plain" / "weights.safetensors").is_file() and not (tmp_path / "plain" / "round0").exists()
    assert train_command.main(["--cache", str(cache), "--out", str(tmp_path / "cells"), *TINY_ARGS,
                               "--head", "instance", "--cell-labels", str(write_cell_labels(
                                   green_marker_bags(12, seed=2), tmp_path / "cells.csv"))]) == 0
    assert not (tmp_path / "cells" / "round0").exists()  # per-cell labels: nothing to self-train


def test_mosaic_bags_beside_pseudo_labelled_bags_carry_unknown_cell_targets(tmp_path: Path) -> None:
    from mil.bags import collate_bags
    from mil.mosaics import BagsWithMosaics

    cache = write_bag_cache(tmp_path / "cells.h5", green_marker_bags(16, seed=0, positive_rate=0.3))
    with CellCache(cache) as opened:
        targets = np.arange(len(opened.cell_table()) * NUM_CLASSES, dtype=np.float32).reshape(-1, NUM_CLASSES) % 2
    dataset = BagsWithMosaics(cache, list(range(16)), mosaic_bags=2, max_cells=4, cell_labels=targets)
    items = [dataset[0], dataset[16]]  # an image's bag, then a mosaic bag
    collated = collate_bags(items)
    rows = items[0].cell_rows.numpy()
    torch.testing.assert_close(collated.cell_labels[0, : len(rows)], torch.from_numpy(targets[rows]))
    assert torch.isnan(collated.cell_labels[1, : items[1].crops.shape[0]]).all()


def test_the_default_command_adds_mosaic_bags_by_fraction_where_they_apply(tmp_path: Path,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    from hpa_cells_cli import train as train_command
    from mil.mosaics import DEFAULT_MOSAIC_FRACTION

    caplog.set_level(logging.INFO)
    cache = write_bag_cache(tmp_path / "cells.h5", green_marker_bags(16, seed=0, positive_rate=0.3))
    assert train_command.main(["--cache", str(cache), "--out", str(tmp_path / "m"), *TINY_ARGS,
                               "--self-training-rounds", "0"]) == 0
    training = json.loads((tmp_path / "m" / "config.json").read_text())["training"]
    assert (training["mosaic_fraction"], training["mosaic_bags"]) == (DEFAULT_MOSAIC_FRACTION, 0)
    assert "mosaic bags per epoch from" in caplog.text
    assert train_command.main(["--cache", str(cache), "--out", str(tmp_path / "n"), *TINY_ARGS,
                               "--self-training-rounds", "0", "--mosaic-bags", "3"]) == 0
    training = json.loads((tmp_path / "n" / "config.json").read_text())["training"]
    assert (training["mosaic_fraction"], training["mosaic_bags"]) == (0.0, 3)
    labels = tmp_path / "labels.csv"  # --labels: the cache's labels are not the ones trained on, so no mosaics
    labels.write_text("Id,Target\n" + "".join(f"sq{i:03d},{i % 2}\n" for i in range(16)))
    assert train_command.main(["--cache", str(cache), "--out", str(tmp_path / "o"), *TINY_ARGS,
                               "--self-training-rounds", "0", "--labels", str(labels)]) == 0
    assert json.loads((tmp_path / "o" / "config.json").read_text())["training"]["mosaic_fraction"] == 0.0


def test_a_default_fraction_without_single_label_images_trains_without_mosaics(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    from hpa_cells_cli import train as train_command

    bags = green_marker_bags(12, seed=0, positive_rate=1.0)  # every image has both classes: no single-label image
    cache = write_bag_cache(tmp_path / "cells.h5", bags)
    assert train_command.main(["--cache", str(cache), "--out", str(tmp_path / "m"), *TINY_ARGS,
                               "--self-training-rounds", "0"]) == 0
    assert "no mosaic bags (mosaic_fraction 0.25)" in caplog.text
    capsys.readouterr()
    assert train_command.main(["--cache", str(cache), "--out", str(tmp_path / "n"), *TINY_ARGS,
                               "--self-training-rounds", "0", "--mosaic-bags", "2"]) == 2  # a count asked for: refused
    assert capsys.readouterr().err == (f"error: {cache}: mosaic bags from the training images: mosaics of >= 2 sources "
                                       "need single-label images of at least 2 different classes; the 0 single-label "
                                       "images given have 0 (none)\n")


def test_fine_tuning_keeps_the_plain_recipe_by_default(tmp_path: Path) -> None:
    from hpa_cells_cli import train as train_command

    cache = write_bag_cache(tmp_path / "cells.h5", green_marker_bags(16, seed=0, positive_rate=0.3))
    start = tmp_path / "start"
    assert train_command.main(["--cache", str(cache), "--out", str(start), *TINY_ARGS, "--self-training-rounds", "0",
                               "--mosaic-fraction", "0"]) == 0
    assert json.loads((start / "config.json").read_text())["training"]["mosaic_fraction"] == 0.0
    tuned = tmp_path / "tuned"
    assert train_command.main(["--cache", str(cache), "--out", str(tuned), "--init", str(start), "--epochs", "1",
                               "--device", "cpu", "--val-fraction", "0.25"]) == 0
    training = json.loads((tuned / "config.json").read_text())["training"]
    assert training["mosaic_fraction"] == 0.0 and training["init_from"] == str(start)
    assert not (tuned / "round0").exists()
