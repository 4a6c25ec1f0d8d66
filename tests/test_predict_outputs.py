"""predict.py's outputs are complete or refused (issue 16): submission.csv holds every test id (the cache's skipped
fields with an empty prediction, counted), and a cache that does not fit the model (crop size, whole fields vs
cells), a truncated cache and a cache where every field was skipped are one-line errors, not tracebacks."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from mil_fixtures import PROVENANCE, QC_FLAG_NAMES, random_bags, write_bag_cache

import hpa_cells_cli.predict as predict_command
from hpa_cells.cache import CacheProvenance, CellCacheWriter
from hpa_cells.predictions import read_prediction_folder
from mil.config import MILConfig
from mil.inference import WHOLE_FIELD_SEGMENTER
from mil.training import TrainConfig, train_mil

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SKIPPED = {"zz_bad": "unreadable: zz_bad_green.png is not an image", "aa_empty": "no cells"}


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny crop model trained on a 16 px crop cache of segmenter 'hand' (cells)."""
    root = tmp_path_factory.mktemp("model")
    cache = write_bag_cache(root / "bags.h5", random_bags(6, seed=3))
    train_mil(cache, root / "model", MILConfig(encoder="test_resnet", input_size=16, dropout=0.0),
              TrainConfig(epochs=1, batch_size=4, max_cells=4, val_fraction=0.34, device="cpu"))
    return root / "model"


def _cache_with_skipped(path: Path, crop_size: int = 16, segmenter: str = "hand") -> Path:
    """Three images of random bags plus the fields of SKIPPED, recorded as skipped."""
    write_bag_cache(path, random_bags(3, seed=9, crop_size=crop_size))
    with h5py.File(path, "r+") as f:
        f.attrs["segmenter"] = segmenter
    provenance = CacheProvenance(segmenter, PROVENANCE.model_sha256, PROVENANCE.parameters)
    with CellCacheWriter(path, crop_size, provenance, QC_FLAG_NAMES) as writer:
        for image_id, reason in SKIPPED.items():
            writer.add_skipped(image_id, reason)
    return path


def _predict(model: Path, cache: Path, out: Path) -> int:
    return predict_command.main(["--model", str(model), "--cache", str(cache), "--out", str(out)])


def test_submission_holds_every_test_id_and_says_how_many_have_no_prediction(
        model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = _cache_with_skipped(tmp_path / "cells.h5")
    assert _predict(model, cache, tmp_path / "p") == 0
    printed = capsys.readouterr().out
    assert ("  2 fields without a prediction (skipped while segmenting, or without cells) are in submission.csv with "
            "an empty prediction (manifest.json: unpredicted)") in printed
    submission = pd.read_csv(tmp_path / "p" / "submission.csv", dtype=str, keep_default_na=False)
    # predicted fields in cache order, then the skipped ones in id order (the cache keeps its skipped table sorted
    # by id, so that a merged cache equals a single-process one)
    assert list(submission["Id"]) == ["img000", "img001", "img002", "aa_empty", "zz_bad"]
    assert list(submission["Predicted"][3:]) == ["", ""]
    folder = read_prediction_folder(tmp_path / "p")
    assert folder.image_ids == ["img000", "img001", "img002"]  # images.csv: the predicted images only
    assert folder.unpredicted == SKIPPED
    assert folder.manifest["n_unpredicted"] == 2 and folder.manifest["n_images"] == 3


def test_a_cache_of_another_crop_size_is_refused_naming_both(model: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    cache = write_bag_cache(tmp_path / "c32.h5", random_bags(3, seed=9, crop_size=32))
    assert _predict(model, cache, tmp_path / "p") == 2
    assert capsys.readouterr().err == (
        f"error: {cache} holds 32 px crops but model {model} was trained on 16 px crops; re-segment with "
        "--crop-size 16 or give a model trained on 32 px crops\n")
    assert not (tmp_path / "p").exists()


def test_a_whole_field_cache_for_a_cell_model_is_refused_and_vice_versa(model: Path, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    cache = _cache_with_skipped(tmp_path / "fields.h5", segmenter=WHOLE_FIELD_SEGMENTER)
    assert _predict(model, cache, tmp_path / "p") == 2
    assert capsys.readouterr().err == (
        f"error: {cache} holds whole fields (segmenter whole_field) but model {model} was trained on cells "
        "(segmenter hand); segment with the model's segmenter or give a model trained on whole fields\n")
    field_model = tmp_path / "field_model"
    config = json.loads((model / "config.json").read_text())
    config["training"]["cache_provenance"]["segmenter"] = WHOLE_FIELD_SEGMENTER
    field_model.mkdir()
    for item in model.iterdir():
        if item.is_file():
            (field_model / item.name).write_bytes(item.read_bytes())
    (field_model / "config.json").write_text(json.dumps(config))
    cells = write_bag_cache(tmp_path / "cells.h5", random_bags(2, seed=1))
    assert _predict(field_model, cells, tmp_path / "q") == 2
    assert capsys.readouterr().err == (
        f"error: {cells} holds cells (segmenter hand) but model {field_model} was trained on whole fields "
        "(segmenter whole_field); segment with the model's segmenter or give a model trained on cells\n")


def test_the_whole_field_name_is_the_segmenters() -> None:
    from segmentation.whole_field import WholeFieldSegmenter

    assert WholeFieldSegmenter.name == WHOLE_FIELD_SEGMENTER


def test_an_old_model_folder_without_the_record_warns_and_predicts(model: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    old = tmp_path / "old_model"
    old.mkdir()
    for item in model.iterdir():
        if item.is_file():
            (old / item.name).write_bytes(item.read_bytes())
    config = json.loads((old / "config.json").read_text())
    del config["training"]["cache_provenance"]
    (old / "config.json").write_text(json.dumps(config))
    cache = write_bag_cache(tmp_path / "c32.h5", random_bags(2, seed=9, crop_size=32))
    assert _predict(old, cache, tmp_path / "p") == 0
    assert capsys.readouterr().err.startswith(
        f"warning: model {old} does not record the crop size and segmenter of its training cache (an older model "
        f"folder): {cache} cannot be checked against it\n")


def test_a_truncated_cache_is_one_line(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    whole = write_bag_cache(tmp_path / "whole.h5", random_bags(3, seed=9))
    cut = tmp_path / "cut.h5"
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    assert _predict(model, cut, tmp_path / "p") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cell cache {cut} cannot be read (cell cache {cut} cannot be opened as HDF5: ")
    assert err.endswith("); segment the fields again into a new file\n") and err.count("\n") == 1


def test_a_cache_where_every_field_was_skipped_is_one_line(model: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    cache = tmp_path / "skipped.h5"
    with CellCacheWriter(cache, 16, PROVENANCE, QC_FLAG_NAMES) as writer:
        for image_id, reason in SKIPPED.items():
            writer.add_skipped(image_id, reason)
    assert _predict(model, cache, tmp_path / "p") == 2
    assert capsys.readouterr().err == (
        f"error: cell cache {cache} holds no field to predict: all 2 fields were skipped while segmenting (first: "
        f"aa_empty: {SKIPPED['aa_empty']})\n")


def test_the_writer_refuses_an_id_both_predicted_and_unpredicted(tmp_path: Path) -> None:
    from hpa_cells.predictions import Predictions, write_prediction_folder

    cells = pd.DataFrame({"image_id": ["a"], "cell_id": [1], "qc_flags": [0]})
    predictions = Predictions(["a"], np.zeros((1, 28)), cells, np.zeros((1, 1)), np.full(28, 0.5))
    with pytest.raises(ValueError, match=r"images \['a'\] are both predicted and listed as without a prediction"):
        write_prediction_folder(predictions, tmp_path / "p", {}, QC_FLAG_NAMES, {"a": "no cells"})
