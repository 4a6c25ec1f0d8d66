"""Prediction batching (the GPU path, checked on the CPU): bags grouped by images and padded cells per forward pass,
the defaults per device, the background read-ahead, the same probabilities whatever the grouping, and the device in
predict.py's and evaluate.py's outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from mil_fixtures import random_bags, write_bag_cache

import hpa_cells_cli.evaluate as evaluate_command
import hpa_cells_cli.predict as predict_command
from mil.config import MILConfig
from mil.inference import (
    CPU_IMAGES_PER_PASS,
    GPU_CELLS_PER_PASS,
    GPU_IMAGES_PER_PASS,
    PredictionBatching,
    _batched,
    _prefetched,
    bags_from_cache,
    predict_bags,
    prediction_batching,
)
from mil.model_folder import load_model
from mil.prediction_batches import BagInput, padded_crops, to_device
from mil.training import TrainConfig, train_mil

pytestmark = pytest.mark.usefixtures("one_torch_thread")
NO_GPU = not torch.cuda.is_available()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(model folder, cache of 9 bags of 1-9 cells): a tiny crop model on 16 px crops."""
    root = tmp_path_factory.mktemp("batching")
    cache = write_bag_cache(root / "bags.h5", random_bags(9, seed=5, min_cells=1, max_cells=9))
    train_mil(cache, root / "model", MILConfig(encoder="test_resnet", input_size=16, dropout=0.0),
              TrainConfig(epochs=1, batch_size=4, max_cells=4, val_fraction=0.34, device="cpu"))
    return root / "model", cache


def bag(name: str, cells: int) -> BagInput:
    table = pd.DataFrame({"cell_id": np.arange(1, cells + 1)})
    return BagInput(name, np.zeros((cells, 4, 4, 4), np.uint8), np.zeros((cells, 4, 4), np.uint8),
                    np.ones(cells, bool), table)


def test_groups_close_at_the_image_count_or_the_padded_cell_budget(caplog: pytest.LogCaptureFixture) -> None:
    bags = [bag("a", 3), bag("b", 3), bag("empty", 0), bag("c", 5), bag("d", 12), bag("e", 1), bag("f", 1)]
    names = [[b.image_id for b in g] for g in _batched(bags, PredictionBatching(images=3, cells=None, bf16=False))]
    assert names == [["a", "b", "c"], ["d", "e", "f"]]
    assert "image empty has no cells; it gets no prediction" in caplog.text
    # budget 10: a+b pad to 2 x 3 = 6; adding c (5 cells) pads all three to 15; d (12) is a pass of its own;
    # e joins nothing larger than d's 12 x 2 = 24 > 10, so it starts a pass, f pads to 2 x 1
    names = [[b.image_id for b in g] for g in _batched(bags, PredictionBatching(images=8, cells=10, bf16=False))]
    assert names == [["a", "b"], ["c"], ["d"], ["e", "f"]]


def test_batching_defaults_by_device_and_refuses_bad_values() -> None:
    assert prediction_batching("cpu") == PredictionBatching(CPU_IMAGES_PER_PASS, None, False)
    assert prediction_batching("cpu", batch_size=3, cell_budget=40) == PredictionBatching(3, 40, False)
    gpu = prediction_batching("cuda")
    assert (gpu.images, gpu.cells) == (GPU_IMAGES_PER_PASS, GPU_CELLS_PER_PASS)
    assert gpu.bf16 == (not NO_GPU and torch.cuda.is_bf16_supported())
    with pytest.raises(ValueError, match="^bf16 prediction needs a CUDA GPU with bf16 support; cpu has none$"):
        prediction_batching("cpu", bf16=True)
    with pytest.raises(ValueError, match="^images per forward pass must be a whole number >= 1, got 0$"):
        PredictionBatching(0, None, False)
    with pytest.raises(ValueError, match="^cells per forward pass must be None or a whole number >= 1, got 0$"):
        PredictionBatching(1, 0, False)


def test_read_ahead_keeps_order_raises_errors_and_closes_the_source_when_stopped() -> None:
    assert list(_prefetched(iter(range(7)), depth=2)) == list(range(7))
    closed = []

    def source():
        try:
            yield from range(100)
        finally:
            closed.append(True)

    stream = _prefetched(source(), depth=2)
    assert [next(stream), next(stream)] == [0, 1]
    stream.close()
    assert closed == [True]

    def failing():
        yield 1
        raise OSError("cache read failed")

    with pytest.raises(OSError, match="^cache read failed$"):
        list(_prefetched(failing()))


def test_inputs_are_uint8_padded_and_refused_otherwise() -> None:
    crops, masks = padded_crops([bag("a", 2), bag("b", 3)])
    assert crops.shape == (2, 3, 4, 4, 4) and crops.dtype == torch.uint8 and masks.shape == (2, 3, 4, 4)
    wrong = bag("c", 1)
    wrong.crops = wrong.crops.astype(np.float32)
    with pytest.raises(ValueError, match="^image c: crops and masks must be uint8, got float32 and uint8$"):
        padded_crops([wrong])
    assert to_device(crops, "cpu") is crops or torch.equal(to_device(crops, "cpu"), crops)


def test_the_grouping_does_not_change_the_probabilities(trained: tuple[Path, Path]) -> None:
    model, cache = trained
    loaded = load_model(model)
    flags = ("border",)
    default = predict_bags(loaded, bags_from_cache(cache, flags))
    small = predict_bags(loaded, bags_from_cache(cache, flags), batch_size=64, cell_budget=10)
    one_by_one = predict_bags(loaded, bags_from_cache(cache, flags), batch_size=1)
    assert default.image_ids == small.image_ids == one_by_one.image_ids
    for other in (small, one_by_one):
        np.testing.assert_allclose(other.image_probs, default.image_probs, atol=1e-6)
        np.testing.assert_allclose(other.cell_attention, default.cell_attention, atol=1e-6)
        pd.testing.assert_frame_equal(other.cells, default.cells, atol=1e-6)


def test_predict_records_and_prints_its_device(trained: tuple[Path, Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    model, cache = trained
    code = predict_command.main(["--model", str(model), "--cache", str(cache), "--out", str(tmp_path / "p"),
                                 "--cell-budget", "20"])
    assert code == 0
    manifest = json.loads((tmp_path / "p" / "manifest.json").read_text())
    device = "cuda" if not NO_GPU else "cpu"
    assert manifest["device"]["device"] == device and manifest["device"]["torch"] == torch.__version__
    assert manifest["batching"]["cells"] == 20
    assert manifest["batching"]["images"] == (GPU_IMAGES_PER_PASS if device == "cuda" else CPU_IMAGES_PER_PASS)
    assert f"  device: {device} (" in capsys.readouterr().out


@pytest.mark.skipif(not NO_GPU, reason="needs a machine without a GPU")
def test_cuda_without_a_gpu_is_one_line_for_predict_and_evaluate(trained: tuple[Path, Path], tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    model, cache = trained
    assert predict_command.main(["--model", str(model), "--cache", str(cache), "--out", str(tmp_path / "p"),
                                 "--device", "cuda"]) == 2
    assert capsys.readouterr().err.startswith("error: --device cuda: torch sees no CUDA GPU on this machine")
    labels = tmp_path / "labels.csv"
    labels.write_text("Id,Target\nimg000,0\n")
    assert evaluate_command.main(["--pred", str(tmp_path), "--labels", str(labels), "--device", "cuda"]) == 2
    assert capsys.readouterr().err.startswith("error: --device cuda: torch sees no CUDA GPU on this machine")


def test_evaluate_records_its_device(trained: tuple[Path, Path], tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    model, cache = trained
    assert predict_command.main(["--model", str(model), "--cache", str(cache), "--out", str(tmp_path / "p")]) == 0
    labels = tmp_path / "labels.csv"
    labels.write_text("Id,Target\n" + "".join(f"img{i:03d},{i % 4}\n" for i in range(9)))
    capsys.readouterr()
    assert evaluate_command.main(["--pred", str(tmp_path / "p"), "--labels", str(labels), "--device", "cpu",
                                  "--json-out", str(tmp_path / "scores.json")]) == 0
    assert capsys.readouterr().out.rstrip().splitlines()[-1].startswith("device: cpu (")
    record = json.loads((tmp_path / "scores.json").read_text())
    assert record["device"]["device"] == "cpu" and "image_macro_f1" in record


def test_bags_from_cache_reads_only_the_images_asked_for(trained: tuple[Path, Path],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from hpa_cells.cache import CellCache

    _, cache = trained
    every = list(bags_from_cache(cache, ("border",)))
    wanted = [every[-1].image_id, every[1].image_id]  # any order in: storage order out
    read = []
    original = CellCache.cells_of
    monkeypatch.setattr(CellCache, "cells_of", lambda self, index: read.append(index) or original(self, index))
    chosen = list(bags_from_cache(cache, ("border",), image_ids=wanted))
    assert [b.image_id for b in chosen] == [every[1].image_id, every[-1].image_id]
    assert read == [1, len(every) - 1]
    for bag_in, full in zip(chosen, (every[1], every[-1]), strict=True):
        np.testing.assert_array_equal(bag_in.crops, full.crops)
        np.testing.assert_array_equal(bag_in.usable, full.usable)
