"""End to end on a tiny synthetic set: segment -> train -> predict -> evaluate, and the evaluation's numbers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import hpa_cells_cli.evaluate as evaluate_command
from hpa_cells.labels import read_labels, write_labels_2018
from hpa_cells.predictions import write_prediction_folder
from hpa_cells.synthetic.dataset import SyntheticConfig, write_dataset
from mil.config import MILConfig
from mil.evaluation import TruthFolderError, evaluate_predictions
from mil.inference import predict_cache
from mil.model_folder import load_model
from mil.training import TrainConfig, train_mil
from segmentation.segment_to_cache import SegmentJob, segment_folder
from segmentation.watershed import WatershedSegmenter

pytestmark = pytest.mark.usefixtures("one_torch_thread")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pipeline")
    synthetic = root / "synthetic"
    write_dataset(synthetic, 6, SyntheticConfig(seed=11, size=256, balanced=True))
    cache = root / "cells.h5"
    segment_folder(SegmentJob(synthetic, cache, labels_path=synthetic / "train.csv", working_size=256),
                   WatershedSegmenter())
    model = root / "model"
    train_mil(cache, model, MILConfig(encoder="test_resnet", input_size=16, dropout=0.0),
              TrainConfig(epochs=1, batch_size=4, max_cells=4, val_fraction=0.34, device="cpu"))
    loaded = load_model(model)
    predictions = predict_cache(loaded, cache, show_progress=False)
    pred = root / "pred"
    from hpa_cells.cache import CellCache

    with CellCache(cache) as opened:
        flags = opened.qc_flag_names
    write_prediction_folder(predictions, pred, {"model": str(model), "cache": str(cache)}, flags)
    return {"synthetic": synthetic, "cache": cache, "model": model, "pred": pred, "root": root}


def test_evaluation_scores_images_and_cells(pipeline: dict[str, Path]) -> None:
    synthetic = pipeline["synthetic"]
    report = evaluate_predictions(pipeline["pred"], synthetic / "train.csv", synthetic)
    assert report.n_images == 6 and report.images_without_labels == 0
    assert 0.0 <= report.image_macro_f1 <= 1.0
    truth_cells = pd.read_csv(synthetic / "cells.csv")
    assert report.cells_true == len(truth_cells)
    assert 0 < report.cells_matched <= report.cells_true
    predicted_cells = pd.read_csv(pipeline["pred"] / "cells.csv")
    assert report.cells_predicted == len(predicted_cells)
    assert 0.0 <= report.cell_map <= 1.0 and 0.0 <= report.cell_map_true_masks <= 1.0
    # per-class cell AP exists exactly for the classes some true cell carries
    carried = {int(c) for labels in truth_cells["labels"].dropna().astype(str) for c in labels.split()}
    from hpa_cells.classes import CLASS_NAMES

    assert {k for k, v in report.per_class_cell_ap.items() if v is not None} == {CLASS_NAMES[c] for c in carried}
    assert json.loads(json.dumps(report.to_dict()))["cell_map"] == report.cell_map


def test_cell_scores_cover_only_the_labelled_images(pipeline: dict[str, Path]) -> None:
    synthetic = pipeline["synthetic"]
    labels = read_labels(synthetic / "train.csv")
    subset = dict(list(labels.items())[:2])
    path = write_labels_2018(pipeline["root"] / "two.csv", subset)
    report = evaluate_predictions(pipeline["pred"], path, synthetic)
    truth_cells = pd.read_csv(synthetic / "cells.csv")
    assert report.n_images == 2 and report.images_without_labels == 4
    assert report.cells_true == int(truth_cells["image_id"].isin(subset).sum())


def test_missing_truth_files_are_named(pipeline: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(TruthFolderError, match=f"^{tmp_path} has no cells.csv with per-cell truth$"):
        evaluate_predictions(pipeline["pred"], pipeline["synthetic"] / "train.csv", tmp_path)


def test_evaluate_script_prints_json(pipeline: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    module = evaluate_command
    synthetic = pipeline["synthetic"]
    written = pipeline["root"] / "reports" / "evaluation.json"
    assert module.main(["--pred", str(pipeline["pred"]), "--labels", str(synthetic / "train.csv"),
                        "--truth", str(synthetic), "--json", "--json-out", str(written)]) == 0
    record = json.loads(capsys.readouterr().out)
    assert json.loads(written.read_text()) == record
    for key in ("image_macro_f1", "per_class_f1", "cell_map", "cell_map_true_masks"):
        assert key in record
    assert np.isfinite(record["cell_map"])
    bad = module.main(["--pred", str(pipeline["root"]), "--labels", str(synthetic / "train.csv")])
    assert bad == 2
    assert "is not a prediction folder: images.csv is missing" in capsys.readouterr().err


def test_evaluate_names_the_labelled_images_without_a_prediction(pipeline: dict[str, Path],
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 16: 2 of 6 labelled images predicted, the 4 others were never mentioned."""
    images = pd.read_csv(pipeline["pred"] / "images.csv", dtype={"image_id": str}, keep_default_na=False)
    kept = list(images["image_id"][:2])
    labels = read_labels(pipeline["synthetic"] / "train.csv")
    partial = pipeline["root"] / "partial"
    from hpa_cells.predictions import read_prediction_folder

    folder = read_prediction_folder(pipeline["pred"])
    partial.mkdir()
    for name in ("cells.csv", "attention.h5", "submission.csv"):
        (partial / name).write_bytes((pipeline["pred"] / name).read_bytes())
    images[images["image_id"].isin(kept)].to_csv(partial / "images.csv", index=False)
    (partial / "manifest.json").write_text(json.dumps({**folder.manifest, "n_images": 2}))
    assert evaluate_command.main(["--pred", str(partial), "--labels", str(pipeline["synthetic"] / "train.csv")]) == 0
    printed = capsys.readouterr().out.splitlines()
    missing = [i for i in labels if i not in kept]
    assert printed[0] == "images scored: 2 (predicted images without labels: 0)"
    assert printed[1] == (f"labelled images without a prediction (not scored): 4 ({', '.join(missing)}; 0 of them "
                          "skipped while segmenting or without cells)")


def test_evaluate_refuses_an_images_table_cut_mid_row(pipeline: dict[str, Path], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    cut = shutil.copytree(pipeline["pred"], tmp_path / "cut")
    data = (cut / "images.csv").read_bytes()
    (cut / "images.csv").write_bytes(data[:-3])
    n_lines = data.count(b"\n")
    assert evaluate_command.main(["--pred", str(cut), "--labels", str(pipeline["synthetic"] / "train.csv")]) == 2
    assert capsys.readouterr().err == (f"error: {cut / 'images.csv'}, line {n_lines}: the file ends mid-row (no line "
                                       "end after the last row: cut while copying or writing?)\n")
