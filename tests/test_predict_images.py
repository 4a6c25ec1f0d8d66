"""`predict.py --images DIR`: fields in, maps out, with nothing else (segmentation into OUT/cells.h5 included), and
`--model bundled`, the default model, with its one-line errors when it is not installed."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from mil_fixtures import random_bags, write_bag_cache

import hpa_cells_cli.predict as predict_command
from hpa_cells.cache import CellCache
from hpa_cells.channels import CHANNELS
from hpa_cells.images import read_sample
from hpa_cells.synthetic.dataset import SyntheticConfig, write_dataset
from mil.config import MILConfig
from mil.training import TrainConfig, train_mil

pytestmark = pytest.mark.usefixtures("one_torch_thread")
WEBSITE_IDS = ("1234_A1_1", "1234_A1_2")
CROP_SIZE = 128
"""segment.py's default --crop-size."""
DISPLAY_COLOURS_BGR = {"red": (0, 0, 1), "green": (0, 1, 0), "blue": (1, 0, 0), "yellow": (0, 1, 1)}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete model folder (with its model card) trained in seconds on hand-made bags of segment.py's default
    crop size (predict.py refuses a cache of another crop size than the training cache's)."""
    root = tmp_path_factory.mktemp("tiny_model")
    cache = write_bag_cache(root / "bags.h5", random_bags(8, seed=3, crop_size=CROP_SIZE))
    model = root / "model"
    train_mil(cache, model, MILConfig(encoder="test_resnet", input_size=16, dropout=0.0),
              TrainConfig(epochs=1, batch_size=4, max_cells=4, val_fraction=0.25, device="cpu"))
    (model / "MODEL_CARD.md").write_text("# tiny test model\n")
    return model


@pytest.fixture(scope="module")
def website_fields(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two synthetic 512 px fields saved the way the HPA website serves them: `{plate}_{well}_{field}_{colour}.jpg`,
    each channel an RGB JPEG in its display colour."""
    root = tmp_path_factory.mktemp("website")
    write_dataset(root / "synthetic", 2, SyntheticConfig(seed=5, size=512))
    ids = sorted(p.name[: -len("_red.png")] for p in (root / "synthetic").glob("*_red.png"))
    images = root / "images"
    images.mkdir()
    for sample_id, website_id in zip(ids, WEBSITE_IDS, strict=True):
        field_chw = read_sample(root / "synthetic", sample_id)
        for channel, plane in zip(CHANNELS, field_chw, strict=True):
            bgr = np.stack([plane * weight for weight in DISPLAY_COLOURS_BGR[channel]], axis=2)
            cv2.imwrite(str(images / f"{website_id}_{channel}.jpg"), bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
    return images


def test_images_to_maps_with_the_default_model_and_nothing_else(
    tiny_model: Path, website_fields: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], no_network: None,
) -> None:
    monkeypatch.setattr(predict_command, "BUNDLED_MODEL_DIR", tiny_model)
    out = tmp_path / "out"
    argv = ["--images", str(website_fields), "--out", str(out), "--maps", str(out / "maps")]
    assert predict_command.main(argv) == 0
    printed = capsys.readouterr().out
    assert f"Segmenting the fields in {website_fields} into {out / 'cells.h5'} (kept: rerunning resumes)" in printed
    assert "  working size: 512x512 -> 512x512 (2 images)" in printed
    assert "  images found: 2; already in the cache: 0; segmented now: 2; skipped now: 0" in printed
    assert "Predicted 2 images, " in printed and f"-> {out}" in printed
    with CellCache(out / "cells.h5") as cache:
        assert cache.image_ids == list(WEBSITE_IDS)
        assert cache.provenance["parameters"]["working_size"] == "auto"
        n_cells = len(cache.cell_table())
    cells = pd.read_csv(out / "cells.csv")
    assert len(cells) == n_cells > 0 and set(cells["image_id"]) == set(WEBSITE_IDS)
    for image_id in WEBSITE_IDS:
        assert (out / "maps" / image_id / "overview.png").is_file(), image_id
    # the cache in OUT is kept: a rerun resumes instead of segmenting again
    assert predict_command.main(argv) == 0
    assert "  images found: 2; already in the cache: 2; segmented now: 0; skipped now: 0" in capsys.readouterr().out


@pytest.mark.parametrize("inputs", [[], ["--cache", "cells.h5", "--images", "fields"]])
def test_exactly_one_of_cache_and_images(inputs: list[str], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert predict_command.main([*inputs, "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == ("error: give exactly one of --cache FILE (cells segmented already by "
                                       "scripts/segment.py) or --images DIR (fields to segment first)\n")
    assert not (tmp_path / "out").exists()


def test_missing_bundled_model_is_one_clear_line(tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    absent = tmp_path / "mil" / "models" / "bundled"
    monkeypatch.setattr(predict_command, "BUNDLED_MODEL_DIR", absent)
    argv = ["--images", str(tmp_path / "fields"), "--out", str(tmp_path / "out")]
    assert predict_command.main(argv) == 2
    assert capsys.readouterr().err == (
        f"error: the bundled model is not installed ({absent} does not exist); pass --model FOLDER, a model folder "
        "written by scripts/train.py (or several folders for an ensemble)\n")
    absent.mkdir(parents=True)
    (absent / "config.json").write_bytes((tiny_model / "config.json").read_bytes())
    assert predict_command.main([*argv, "--model", "bundled"]) == 2
    assert capsys.readouterr().err == (
        f"error: the bundled model is not installed ({absent} lacks weights.safetensors, thresholds.json, "
        "metrics.json, MODEL_CARD.md); pass --model FOLDER, a model folder written by scripts/train.py (or several "
        "folders for an ensemble)\n")
    assert not (tmp_path / "out").exists()  # nothing segmented before the model is known to load


def test_an_explicit_model_folder_with_a_cache_still_works(tiny_model: Path, website_fields: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(predict_command, "BUNDLED_MODEL_DIR", tmp_path / "not-installed")
    cache = write_bag_cache(tmp_path / "bags.h5", random_bags(3, seed=9, crop_size=CROP_SIZE))
    assert predict_command.main(["--model", str(tiny_model), "--cache", str(cache), "--out", str(tmp_path / "p")]) == 0
    assert "Predicted 3 images, " in capsys.readouterr().out
    assert set(pd.read_csv(tmp_path / "p" / "images.csv")["image_id"]) == {b.image_id for b in random_bags(3, seed=9)}
