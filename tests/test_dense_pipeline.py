"""The dense family end to end on a tiny synthetic set through the scripts: segment -> train.py --family dense ->
predict.py (alone and as an ensemble with a crop model) -> evaluate.py; and a schema-1 cache refused clearly."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

import hpa_cells_cli.evaluate as evaluate_command
import hpa_cells_cli.maps as maps_command
import hpa_cells_cli.predict as predict_command
import hpa_cells_cli.train as train_command
from hpa_cells.cache import CellCache
from hpa_cells.classes import CLASS_NAMES
from hpa_cells.pixel_maps import PIXEL_MAPS_FILE, PixelMaps
from hpa_cells.synthetic.dataset import SyntheticConfig, write_dataset
from mil.config import MILConfig
from mil.inference import CELL_SCORES, score_cells
from mil.model_folder import REQUIRED_FILES, load_model
from mil.training import TrainConfig, train_mil
from segmentation.segment_to_cache import SegmentJob, segment_folder
from segmentation.watershed import WatershedSegmenter

pytestmark = pytest.mark.usefixtures("one_torch_thread")
REPO = Path(__file__).resolve().parents[1]
DENSE_ARGS = ["--family", "dense", "--dense-encoder", "tu-test_resnet", "--dense-input-size", "64", "--epochs", "1",
              "--batch-size", "4", "--val-fraction", "0.34", "--device", "cpu", "--lr", "3e-3"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dense")
    synthetic = root / "synthetic"
    write_dataset(synthetic, 6, SyntheticConfig(seed=11, size=256, balanced=True))
    cache = root / "cells.h5"
    segment_folder(SegmentJob(synthetic, cache, labels_path=synthetic / "train.csv", working_size=256),
                   WatershedSegmenter())
    dense, crop = root / "dense", root / "crop"
    assert train_command.main(["--cache", str(cache), "--out", str(dense), *DENSE_ARGS, "--cell-pool", "lse"]) == 0
    train_mil(cache, crop, MILConfig(encoder="test_resnet", input_size=16, dropout=0.0),
              TrainConfig(epochs=1, batch_size=4, max_cells=4, val_fraction=0.34, device="cpu"))
    predict = predict_command
    for name, models, extra in (("pred_dense", [dense], []), ("pred_crop", [crop], []),
                                ("pred_ensemble", [crop, dense], []), ("pred_crop_own", [crop], ["--cell-score", "cell"]),
                                ("pred_ensemble_own", [crop, dense], ["--cell-score", "cell"])):
        argv = ["--cache", str(cache), "--out", str(root / name), *extra]
        for model in models:
            argv += ["--model", str(model)]
        assert predict.main(argv) == 0
    return {"root": root, "synthetic": synthetic, "cache": cache, "dense": dense, "crop": crop}


def test_dense_model_folder_has_the_common_format(run: dict[str, Path]) -> None:
    folder = run["dense"]
    assert all((folder / name).is_file() for name in REQUIRED_FILES)
    assert (folder / "metrics.csv").is_file() and (folder / "training_curves.png").is_file()
    record = json.loads((folder / "config.json").read_text())
    assert record["model"]["family"] == "dense" and record["model"]["cell_pool"] == "lse"
    assert record["model"]["encoder"] == "tu-test_resnet" and record["model"]["input_size"] == 64
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["epochs_run"] == 1 and metrics["train_images_per_second"] > 0
    assert metrics["n_train_images"] + metrics["n_val_images"] == 6
    loaded = load_model(folder)
    assert type(loaded.model).__name__ == "DenseMILModel" and loaded.thresholds.shape == (28,)


def test_dense_cells_csv_has_the_crop_layout_and_pixel_maps_stay_inside_cells(run: dict[str, Path]) -> None:
    dense = pd.read_csv(run["root"] / "pred_dense" / "cells.csv")
    crop = pd.read_csv(run["root"] / "pred_crop" / "cells.csv")
    assert list(dense.columns) == list(crop.columns)
    pd.testing.assert_frame_equal(dense[["image_id", "cell_id", "centroid_y"]], crop[["image_id", "cell_id", "centroid_y"]])
    probs = dense[list(CLASS_NAMES)].to_numpy()
    assert ((probs >= 0) & (probs <= 1)).all()
    with PixelMaps(run["root"] / "pred_dense" / PIXEL_MAPS_FILE) as maps, CellCache(run["cache"]) as cache:
        assert maps.image_ids == cache.image_ids
        first = cache.image_ids[0]
        stored, working_hw = maps.raw(first)
        assert stored.shape == (28, 64, 64) and working_hw == (256, 256)
        cells_hw, _ = cache.full_masks(first)
        small = cells_hw[::4, ::4]  # the model saw the field at 64 px
        assert (stored[:, small == 0] == 0).mean() > 0.95  # background stays empty (up to resizing at edges)
        assert stored[:, small > 0].max() > 0
        assert maps.read(first).shape == (28, 256, 256)
    manifest = json.loads((run["root"] / "pred_dense" / "manifest.json").read_text())
    assert manifest["families"] == ["dense"] and manifest["pixel_maps"] == PIXEL_MAPS_FILE


def test_ensemble_averages_members_and_their_thresholds(run: dict[str, Path]) -> None:
    root = run["root"]
    cells = {name: pd.read_csv(root / name / "cells.csv") for name in ("pred_dense", "pred_crop", "pred_ensemble")}
    images = {name: pd.read_csv(root / name / "images.csv") for name in cells}
    for tables in (cells, images):
        mean = (tables["pred_dense"][list(CLASS_NAMES)] + tables["pred_crop"][list(CLASS_NAMES)]) / 2
        np.testing.assert_allclose(tables["pred_ensemble"][list(CLASS_NAMES)], mean, atol=2e-5)
    manifests = {name: json.loads((root / name / "manifest.json").read_text()) for name in cells}
    ensemble = manifests["pred_ensemble"]
    assert ensemble["models"] == [str(run["crop"].resolve()), str(run["dense"].resolve())]
    assert ensemble["families"] == ["crop", "dense"] and "mean" in ensemble["ensemble_rule"]
    np.testing.assert_allclose(ensemble["thresholds"], (np.asarray(manifests["pred_dense"]["thresholds"])
                                                        + manifests["pred_crop"]["thresholds"]) / 2)
    with h5py.File(root / "pred_ensemble" / "attention.h5") as f:
        assert f["attention"].shape == (len(cells["pred_ensemble"]), 2)  # one column per member
    assert (root / "pred_ensemble" / PIXEL_MAPS_FILE).is_file()  # from its dense member


@pytest.mark.parametrize("pred", ["pred_crop", "pred_ensemble"])
def test_gated_cell_scores_are_the_geometric_mean_of_cell_and_image(run: dict[str, Path], pred: str) -> None:
    """Default cells.csv probabilities = sqrt(the cell's own x its image's); --cell-score cell keeps the cell's own
    (for an ensemble: each member gated, then averaged); the manifest says which."""
    root, classes = run["root"], list(CLASS_NAMES)
    gated = pd.read_csv(root / pred / "cells.csv")
    own = pd.read_csv(root / f"{pred}_own" / "cells.csv")
    assert gated[["image_id", "cell_id"]].equals(own[["image_id", "cell_id"]])
    if pred == "pred_crop":
        images = pd.read_csv(root / pred / "images.csv").set_index("image_id")
        image_probs = images.loc[gated["image_id"], classes].to_numpy()
        np.testing.assert_allclose(gated[classes].to_numpy(), np.sqrt(own[classes].to_numpy() * image_probs),
                                   atol=2e-5)
        assert not np.allclose(gated[classes].to_numpy(), own[classes].to_numpy(), atol=1e-3)
    else:
        members = [pd.read_csv(root / name / "cells.csv")[classes].to_numpy() for name in ("pred_crop", "pred_dense")]
        np.testing.assert_allclose(gated[classes].to_numpy(), (members[0] + members[1]) / 2, atol=2e-5)
    for name, rule in ((pred, "gated"), (f"{pred}_own", "cell")):
        manifest = json.loads((root / name / "manifest.json").read_text())
        assert manifest["cell_score"] == rule and manifest["cell_score_rule"] == CELL_SCORES[rule]


def test_score_cells_rules_and_errors() -> None:
    cells = np.array([[0.64, 0.01], [0.04, 1.0]], dtype=np.float32)
    image = np.array([0.25, 0.81], dtype=np.float32)
    np.testing.assert_allclose(score_cells(cells, image, "gated"), [[0.4, 0.09], [0.1, 0.9]], rtol=1e-6)
    assert score_cells(cells, image, "gated").dtype == np.float32
    assert score_cells(cells, image, "cell") is cells
    with pytest.raises(ValueError, match="^unknown cell score 'max'; choose one of gated, cell$"):
        score_cells(cells, image, "max")
    with pytest.raises(ValueError, match=r"must be C,K and K"):
        score_cells(cells, image[:1], "gated")


@pytest.mark.parametrize("pred", ["pred_dense", "pred_ensemble", "pred_crop_own"])
def test_evaluate_scores_dense_and_ensemble_predictions(run: dict[str, Path], pred: str,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    synthetic = run["synthetic"]
    assert evaluate_command.main(["--pred", str(run["root"] / pred), "--labels", str(synthetic / "train.csv"),
                                  "--truth", str(synthetic), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["n_images"] == 6
    assert 0.0 <= record["cell_map"] <= 1.0 and 0.0 <= record["cell_map_true_masks"] <= 1.0


def test_a_schema_1_cache_is_refused_for_dense_but_serves_the_crop_model(run: dict[str, Path], tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    old = Path(shutil.copy(run["cache"], tmp_path / "old.h5"))
    with h5py.File(old, "r+") as f:
        del f["image_pixels"]
        f.attrs["schema_version"] = 1
    assert train_command.main(["--cache", str(old), "--out", str(tmp_path / "m"), *DENSE_ARGS]) == 2
    error = capsys.readouterr().err
    assert f"{old} is a schema_version 1 cell cache without the full images" in error
    assert "re-run scripts/segment.py" in error
    predict = predict_command
    assert predict.main(["--model", str(run["dense"]), "--cache", str(old), "--out", str(tmp_path / "p")]) == 2
    assert "re-run scripts/segment.py" in capsys.readouterr().err
    assert predict.main(["--model", str(run["crop"]), "--cache", str(old), "--out", str(tmp_path / "c")]) == 0


def test_maps_of_a_dense_model_add_pixel_panels_and_a_pixel_ome_tiff(run: dict[str, Path], tmp_path: Path) -> None:
    import tifffile

    maps = tmp_path / "maps"
    assert maps_command.main(["--pred", str(run["root"] / "pred_dense"), "--maps", str(maps),
                              "--classes", "0", "--limit", "1"]) == 0
    index = pd.read_csv(maps / "maps_index.csv")
    image_id = index["image_id"].iloc[0]
    pixel_panels = index[index["kind"] == "pixel_panel"]
    class_panels = index[index["kind"] == "class_panel"]
    assert sorted(pixel_panels["class_id"]) == sorted(class_panels["class_id"]) and 0 in set(pixel_panels["class_id"])
    assert (maps / image_id / "class_00_pixels.png").is_file()
    with tifffile.TiffFile(maps / image_id / "pixel_probabilities.ome.tif") as tif:
        planes = tif.asarray()
        assert "Nucleoplasm" in tif.ome_metadata
    with CellCache(run["cache"]) as cache:
        cells_hw, _ = cache.full_masks(image_id)
    assert planes.shape == (28, *cells_hw.shape) and planes.dtype == np.uint8  # synthetic: original = working size
    assert (planes[:, cells_hw == 0] == 0).all() and planes[:, cells_hw > 0].max() > 0
    crop_maps = tmp_path / "crop_maps"
    assert maps_command.main(["--pred", str(run["root"] / "pred_crop"), "--maps", str(crop_maps),
                              "--limit", "1", "--no-tiff"]) == 0
    assert "pixel_panel" not in set(pd.read_csv(crop_maps / "maps_index.csv")["kind"])


def test_a_dense_model_can_start_from_a_crop_models_encoder(run: dict[str, Path], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """--encoder-weights CROP_FOLDER: the dense encoder gets the crop encoder's weights (its first conv without the
    mask channel) and the crop model's input standardisation; a folder that does not fit is a one-line error."""
    import torch

    from mil.config import DenseConfig
    from mil.encoders import EncoderWeightsError
    from mil.families import build_model
    from mil.families.dense import with_crop_model_statistics

    crop = load_model(run["crop"])
    config = with_crop_model_statistics(DenseConfig(encoder="tu-test_resnet", input_size=64), run["crop"])
    assert config.channel_mean == tuple(crop.config.channel_mean[:4])
    assert config.channel_std == tuple(crop.config.channel_std[:4])
    dense = build_model(config, encoder_weights=str(run["crop"]))
    crop_state = crop.model.encoder.backbone.state_dict()
    dense_state = dense.network.encoder.model.state_dict()
    first_conv = crop.model.encoder.backbone.pretrained_cfg["first_conv"] + ".weight"
    assert crop_state[first_conv].shape[1] == 5 and dense_state[first_conv].shape[1] == 4
    torch.testing.assert_close(dense_state[first_conv], crop_state[first_conv][:, :4])
    shared = [k for k in dense_state if k != first_conv]
    assert len(shared) > 10 and all(torch.equal(dense_state[k], crop_state[k]) for k in shared)

    with pytest.raises(EncoderWeightsError, match="a dense model folder; only a crop MIL model's encoder"):
        build_model(DenseConfig(encoder="tu-test_resnet", input_size=64), encoder_weights=str(run["dense"]))
    out = tmp_path / "dense_from_crop"
    argv = ["--cache", str(run["cache"]), "--out", str(out), *DENSE_ARGS, "--encoder-weights", str(run["crop"])]
    argv[argv.index("tu-test_resnet")] = "tu-resnet10t"
    assert train_command.main(argv) == 2
    assert capsys.readouterr().err == (f"error: encoder weights {run['crop']}: its encoder is 'test_resnet', which "
                                       "does not fit the dense encoder 'tu-resnet10t' (use --dense-encoder "
                                       "tu-test_resnet)\n")
    assert not out.exists()
    good = tmp_path / "dense_from_crop_ok"
    assert train_command.main(["--cache", str(run["cache"]), "--out", str(good), *DENSE_ARGS,
                               "--encoder-weights", str(run["crop"])]) == 0
    record = json.loads((good / "config.json").read_text())
    assert record["model"]["channel_mean"] == list(crop.config.channel_mean[:4])
    assert record["training"]["encoder_weights"] == str(run["crop"])


def test_dense_training_on_windows_and_its_errors(run: dict[str, Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "windows"
    train = train_command
    assert train.main(["--cache", str(run["cache"]), "--out", str(out), *DENSE_ARGS, "--dense-window", "32"]) == 0
    record = json.loads((out / "config.json").read_text())
    assert record["training"]["dense_window"] == 32 and record["model"]["input_size"] == 64
    assert json.loads((out / "metrics.json").read_text())["epochs_run"] == 1
    capsys.readouterr()
    for window, error in (("96", "error: --dense-window 96 is larger than --dense-input-size 64\n"),
                          ("40", "error: dense_window must be a multiple of 32 and >= 32 (or None), got 40\n")):
        bad = tmp_path / f"bad{window}"
        assert train.main(["--cache", str(run["cache"]), "--out", str(bad), *DENSE_ARGS, "--dense-window", window]) == 2
        assert capsys.readouterr().err == error
        assert not bad.exists()
    crop_argv = ["--cache", str(run["cache"]), "--out", str(tmp_path / "crop"), "--dense-window", "32"]
    assert train.main(crop_argv) == 2
    assert capsys.readouterr().err == "error: --dense-window applies to --family dense only\n"


def test_evaluate_follows_the_folders_cell_score_and_reads_old_folders_as_own(run: dict[str, Path], tmp_path: Path,
                                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """The true-mask pass scores cells by the folder's rule; a folder without `cell_score` (written before it
    existed) holds the cells' own probabilities; an unknown rule is an error naming the manifest."""
    synthetic, evaluate = run["synthetic"], evaluate_command

    def scores(folder: Path) -> dict:
        assert evaluate.main(["--pred", str(folder), "--labels", str(synthetic / "train.csv"), "--truth", str(synthetic),
                              "--json"]) == 0
        return json.loads(capsys.readouterr().out)

    gated, own = scores(run["root"] / "pred_crop"), scores(run["root"] / "pred_crop_own")
    assert gated["cell_score"] == "gated" and own["cell_score"] == "cell"
    old = Path(shutil.copytree(run["root"] / "pred_crop_own", tmp_path / "old"))
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["cell_score"], manifest["cell_score_rule"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    old_scores = scores(old)
    assert old_scores["cell_score"] == "cell"
    assert old_scores["cell_map_true_masks"] == own["cell_map_true_masks"]
    assert old_scores["cell_map"] == own["cell_map"]
    manifest["cell_score"] = "max"
    (old / "manifest.json").write_text(json.dumps(manifest))
    assert evaluate.main(["--pred", str(old), "--labels", str(synthetic / "train.csv"), "--truth", str(synthetic)]) == 2
    assert f"{old / 'manifest.json'}: unknown cell_score 'max'; expected one of gated, cell" in capsys.readouterr().err


def test_compare_cell_map_bootstraps_two_prediction_folders(run: dict[str, Path], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("compare_cell_map", REPO / "benchmarks" / "compare_cell_map.py")
    compare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare)
    root, synthetic = run["root"], str(run["synthetic"])
    assert compare.main(["--a", str(root / "pred_crop"), "--b", str(root / "pred_crop"), "--truth", synthetic,
                         "--resamples", "20"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("6 images; cell mAP A ") and "cell score gated" in out
    assert "B - A = +0.0000; 95% bootstrap interval [+0.0000, +0.0000] over 20 image resamples; B above A in 0%" in out
    assert compare.main(["--a", str(root / "pred_crop_own"), "--b", str(root / "pred_dense"), "--truth", synthetic,
                         "--resamples", "20"]) == 0
    assert "cell score cell), B" in capsys.readouterr().out
    other = Path(shutil.copytree(root / "pred_dense", tmp_path / "fewer"))
    cells = pd.read_csv(other / "cells.csv")
    cells.iloc[1:].to_csv(other / "cells.csv", index=False)
    manifest = json.loads((other / "manifest.json").read_text())  # a whole folder with other cells, not a cut file
    (other / "manifest.json").write_text(json.dumps({**manifest, "n_cells": len(cells) - 1}))
    assert compare.main(["--a", str(root / "pred_crop"), "--b", str(other), "--truth", synthetic]) == 2
    assert capsys.readouterr().err == (f"error: {root / 'pred_crop'} and {other} hold different cells (image_id, "
                                       "cell_id); compare predictions of the same cache\n")
