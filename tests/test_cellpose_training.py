"""Training tiny CPnets on synthetic fields: the bundled files it writes, exact resumption from a checkpoint,
the learning-rate schedule, and the checks on its inputs."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import segmentation.cellpose_training as cellpose_training
from segmentation.cellpose_models import build_network, resolve_model, sha256_of_file
from segmentation.cellpose_training import (
    AnnotatedField,
    SegmenterTrainConfig,
    evaluate_network,
    learning_rate_at,
    train_segmenter,
)
from segmentation.training_data import synthetic_fields

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = SegmenterTrainConfig(
    kind="cells", nbase=(2, 8, 16, 32, 32), steps=4, batch_size=2, crop_size=64, checkpoint_every=2,
    eval_every=100, warmup_steps=4, seed=3,
)


@pytest.fixture(scope="module")
def fields() -> list[AnnotatedField]:
    """Two synthetic 128 px fields with exact cell masks."""
    return synthetic_fields(2, seed=11, size=128, kind="cells")


@pytest.fixture(scope="module")
def uninterrupted(fields: list[AnnotatedField], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The reference: TINY trained for its 4 steps in one go."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    record = train_segmenter(fields, fields[:1], TINY, folder / "work", folder / "model.safetensors")
    return folder / "model.safetensors", record


def assert_same_weights(a: Path, b: Path) -> None:
    first, second = load_file(str(a)), load_file(str(b))
    assert first.keys() == second.keys()
    different = [k for k in first if not torch.equal(first[k], second[k])]
    assert different == []


def test_training_writes_the_bundled_files(uninterrupted: tuple[Path, dict], fields: list[AnnotatedField]) -> None:
    weights, record = uninterrupted
    settings = json.loads(weights.with_suffix(".json").read_text())
    assert settings["nbase"] == [2, 8, 16, 32, 32] and settings["diam_mean"] == 30.0
    assert settings["kind"] == "cells" and settings["use_er"] is True
    assert settings["training"]["config"]["steps"] == 4
    assert settings["training"]["training_fields"] == [f.name for f in fields]
    assert [h["step"] for h in settings["training"]["history"]] == [4]
    assert math.isfinite(settings["training"]["history"][0]["train_loss"])
    assert set(record["validation"][fields[0].name]) == {"ap50", "ap75", "n_true", "n_pred"}
    assert record["validation"][fields[0].name]["n_true"] == int(fields[0].mask.max())
    assert record["sha256"] == sha256_of_file(weights)
    assert record["parameters"] == sum(p.numel() for p in build_network(resolve_model(weights, "cells")).parameters())
    checkpoint = json.loads((weights.parent / "work" / "checkpoint.json").read_text())
    assert checkpoint["step"] == 4
    assert (weights.parent / "work" / "checkpoint.safetensors").is_file()
    # Training moved the weights away from the seeded initialisation.
    torch.manual_seed(TINY.seed)
    from cellpose.resnet_torch import CPnet

    init = CPnet(list(TINY.nbase), 3, sz=3, mkldnn=False, max_pool=True, diam_mean=30.0).state_dict()
    trained = load_file(str(weights))
    assert not torch.equal(init["output.2.weight"], trained["output.2.weight"])


class _Interrupted(Exception):
    """Stands in for the session being killed right after a checkpoint."""


def test_resume_after_a_crash_gives_exactly_the_uninterrupted_weights(
    uninterrupted: tuple[Path, dict], fields: list[AnnotatedField], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    real_save = cellpose_training._save_checkpoint

    def save_then_die(folder: Path, net: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int,
                      history: list[dict]) -> None:
        real_save(folder, net, optimizer, step, history)
        if step == 2:
            raise _Interrupted

    monkeypatch.setattr(cellpose_training, "_save_checkpoint", save_then_die)
    out = tmp_path / "model.safetensors"
    with pytest.raises(_Interrupted):
        train_segmenter(fields, fields[:1], TINY, tmp_path / "work", out)
    assert not out.exists()
    assert json.loads((tmp_path / "work" / "checkpoint.json").read_text())["step"] == 2
    monkeypatch.setattr(cellpose_training, "_save_checkpoint", real_save)

    steps_run: list[int] = []
    real_rate = cellpose_training.learning_rate_at
    monkeypatch.setattr(cellpose_training, "learning_rate_at",
                        lambda step, config: steps_run.append(step) or real_rate(step, config))
    with caplog.at_level(logging.INFO, logger="segmentation.cellpose_training"):
        train_segmenter(fields, fields[:1], TINY, tmp_path / "work", out)
    assert f"resuming cells training from step 2 in {tmp_path / 'work'}" in caplog.messages
    assert steps_run == [2, 3]
    assert_same_weights(out, uninterrupted[0])


def test_extending_a_finished_run_matches_a_longer_run(
    uninterrupted: tuple[Path, dict], fields: list[AnnotatedField], tmp_path: Path
) -> None:
    """steps=2, then steps=4 in the same work_dir; the warm-up (4 steps) makes the rates independent of steps."""
    out = tmp_path / "model.safetensors"
    train_segmenter(fields, [], replace(TINY, steps=2), tmp_path / "work", out)
    two_steps = load_file(str(out))
    record = train_segmenter(fields, fields[:1], TINY, tmp_path / "work", out)
    assert_same_weights(out, uninterrupted[0])
    assert not torch.equal(two_steps["output.2.weight"], load_file(str(out))["output.2.weight"])
    assert [h["step"] for h in record["history"]] == [2, 4]


def test_a_checkpoint_written_before_the_shared_format_resumes_exactly(
    uninterrupted: tuple[Path, dict], fields: list[AnnotatedField], tmp_path: Path
) -> None:
    """A checkpoint as the trainer wrote it before hpa_cells.checkpoints (same tensor names, no token, JSON
    without a newline) still resumes to exactly the uninterrupted weights."""
    from safetensors.torch import save_file

    out, work = tmp_path / "model.safetensors", tmp_path / "work"
    train_segmenter(fields, [], replace(TINY, steps=2), work, out)
    tensors = load_file(str(work / "checkpoint.safetensors"))
    assert any(k.startswith("net.") for k in tensors) and any(k.startswith("opt.") for k in tensors)
    steps = [v for k, v in tensors.items() if k.startswith("opt.") and k.endswith(".step")]
    assert steps and all(v.dtype == torch.float32 and v.shape == (1,) for v in steps)  # as the old trainer wrote
    state = json.loads((work / "checkpoint.json").read_text())
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(work / "checkpoint.safetensors"))
    (work / "checkpoint.json").write_text(json.dumps({"step": state["step"], "history": state["history"]}, indent=1))
    (work / "checkpoint.manifest.json").unlink()  # such checkpoints had no manifest
    train_segmenter(fields, fields[:1], TINY, work, out)
    assert_same_weights(out, uninterrupted[0])


def test_learning_rate_warm_up_then_cosine_to_one_percent() -> None:
    config = replace(TINY, steps=110, warmup_steps=10, learning_rate=0.01)
    assert learning_rate_at(0, config) == pytest.approx(0.001)
    assert learning_rate_at(4, config) == pytest.approx(0.005)
    assert learning_rate_at(9, config) == pytest.approx(0.01)
    assert learning_rate_at(10, config) == pytest.approx(0.01)
    assert learning_rate_at(60, config) == pytest.approx(0.01 * (0.01 + 0.99 * 0.5))
    assert learning_rate_at(85, config) == pytest.approx(0.01 * (0.01 + 0.99 * 0.5 * (1 + math.cos(0.75 * math.pi))))
    assert learning_rate_at(110, config) == pytest.approx(0.0001)
    assert learning_rate_at(500, config) == pytest.approx(0.0001)
    rates = [learning_rate_at(s, config) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(rates, rates[1:], strict=False))


def test_config_checks() -> None:
    with pytest.raises(ValueError, match="^kind must be 'cells' or 'nuclei', got 'cytoplasm'$"):
        SegmenterTrainConfig(kind="cytoplasm")
    with pytest.raises(ValueError, match=r"^nbase must start with the 2 input channels, got \(3, 8\)$"):
        SegmenterTrainConfig(nbase=(3, 8))
    with pytest.raises(ValueError, match="crop_size a multiple of 16"):
        SegmenterTrainConfig(crop_size=100)


@pytest.mark.filterwarnings("ignore:Mean of empty slice", "ignore:invalid value encountered")
def test_training_refuses_empty_inputs(fields: list[AnnotatedField], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="^no training fields$"):
        train_segmenter([], [], TINY, tmp_path / "work", tmp_path / "m.safetensors")
    empty = AnnotatedField("blank-field", fields[0].image, np.zeros_like(fields[0].mask))
    with pytest.raises(ValueError, match="^training field 'blank-field' has no objects in its mask$"):
        train_segmenter([fields[0], empty], [], TINY, tmp_path / "work", tmp_path / "m.safetensors")
    assert not (tmp_path / "m.safetensors").exists()


def test_evaluate_network_scores_each_field(uninterrupted: tuple[Path, dict], fields: list[AnnotatedField]) -> None:
    net = build_network(resolve_model(uninterrupted[0], "cells"))
    scores = evaluate_network(net, TINY, fields, diameter=20.0)
    assert list(scores) == [f.name for f in fields]
    for field, score in zip(fields, scores.values(), strict=True):
        assert score["n_true"] == int(field.mask.max())
        assert 0.0 <= score["ap75"] <= score["ap50"] <= 1.0


@pytest.mark.slow
def test_a_trained_model_segments_unseen_fields_through_the_segmenter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """150 steps on 6 synthetic fields: the bundled-format model must find held-out cells (AP@0.5 >= 0.7 at
    the true diameter; measured 0.86-0.88), proving training and inference use the same conventions."""
    from cellpose.utils import diameters

    import segmentation.cellpose_models as cellpose_models
    from hpa_cells.instance_metrics import average_precision
    from segmentation.cellpose_segmenter import CellposeSegmenter, CellposeSettings

    train = synthetic_fields(6, seed=100, size=256, kind="cells")
    held_out = synthetic_fields(3, seed=101, size=256, kind="cells")
    config = SegmenterTrainConfig(kind="cells", nbase=(2, 16, 32, 64, 64), steps=150, batch_size=4, crop_size=96,
                                  warmup_steps=10, checkpoint_every=1000, eval_every=1000, seed=0)
    folder = tmp_path / "models"
    train_segmenter(train, [], config, tmp_path / "work", folder / "hpa_cells_cells.safetensors")
    nuclei_config = replace(config, kind="nuclei", diam_mean=17.0, steps=1)
    nuclei = synthetic_fields(2, seed=100, size=256, kind="nuclei")
    train_segmenter(nuclei, [], nuclei_config, tmp_path / "work-nuclei", folder / "hpa_cells_nuclei.safetensors")
    monkeypatch.setattr(cellpose_models, "BUNDLED_MODEL_DIR", folder)

    scores = []
    for field in held_out:
        diameter = float(diameters(field.mask.astype(np.int32))[0])
        settings = CellposeSettings(cell_diameter=diameter, cell_assembly="flows")  # the cells network alone
        result = CellposeSegmenter(settings).segment_batch([field.image])[0]
        ap, _, _, _ = average_precision([field.mask], [result.cells], thresholds=(0.5,))
        scores.append(float(ap[0, 0]))
    assert np.mean(scores) >= 0.7, scores


def test_a_first_checkpoint_killed_before_its_renames_is_resumed(
    uninterrupted: tuple[Path, dict], fields: list[AnnotatedField], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """Killed between the first checkpoint's manifest (its commit) and its renames: no `checkpoint.json` yet,
    but the staged files are a checkpoint, and the rerun resumes from it (it did not look before)."""
    import os

    real_replace = os.replace

    def stop_at_the_renames(source: str, target: str) -> None:
        if Path(source).name.startswith("checkpoint.next"):
            raise _Interrupted
        real_replace(source, target)

    work, out = tmp_path / "work", tmp_path / "model.safetensors"
    monkeypatch.setattr(os, "replace", stop_at_the_renames)
    with pytest.raises(_Interrupted):
        train_segmenter(fields, fields[:1], TINY, work, out)
    monkeypatch.setattr(os, "replace", real_replace)
    assert not (work / "checkpoint.json").exists() and (work / "checkpoint.manifest.json").is_file()

    steps_run: list[int] = []
    real_rate = cellpose_training.learning_rate_at
    monkeypatch.setattr(cellpose_training, "learning_rate_at",
                        lambda step, config: steps_run.append(step) or real_rate(step, config))
    with caplog.at_level(logging.INFO, logger="segmentation.cellpose_training"):
        train_segmenter(fields, fields[:1], TINY, work, out)
    assert f"resuming cells training from step 2 in {work}" in caplog.messages
    assert steps_run == [2, 3]
    assert_same_weights(out, uninterrupted[0])
