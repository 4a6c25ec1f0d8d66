"""The model-family registry: every registered family builds from its default config and predicts tiny random
bags through its own `predict_group`; configs and model folders round-trip through the registry."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from mil.config import ConfigError
from mil.encoders import EncoderWeightsError
from mil.families import (
    ModelFamily,
    build_model,
    family_names,
    get_family,
    load_model,
    model_config_from_dict,
    register_family,
)
from mil.model_folder import save_model_folder
from mil.prediction_batches import BagInput

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _tiny_bag(rng: np.random.Generator, size: int = 64, crop: int = 32) -> BagInput:
    """Three square cells: crops and masks (crop families) and the field with its label map (field families)."""
    cells_hw = np.zeros((size, size), np.int64)
    for cell_id, (y, x) in enumerate([(4, 4), (4, 36), (36, 20)], start=1):
        cells_hw[y:y + 20, x:x + 20] = cell_id
    table = pd.DataFrame({"cell_id": [1, 2, 3], "qc_flags": [0, 0, 4]})
    masks = np.zeros((3, crop, crop), np.uint8)
    masks[:, 6:26, 6:26] = 1
    return BagInput("img", rng.integers(0, 256, (3, 4, crop, crop), dtype=np.uint8), masks,
                    np.array([True, True, False]), table, rng.integers(0, 256, (4, size, size), dtype=np.uint8),
                    cells_hw)


def test_the_built_in_families_are_registered() -> None:
    assert family_names() == ["crop", "dense"]
    for name in family_names():
        family = get_family(name)
        assert family.name == name and family.config_class().family == name
        assert family.inputs in ("crops", "fields")


@pytest.mark.parametrize("name", family_names())
def test_every_family_builds_from_its_default_config_and_predicts(name: str) -> None:
    torch.manual_seed(0)
    family = get_family(name)
    config = family.config_class()
    model = build_model(config).eval()
    with torch.no_grad():
        out = family.predict_group(model, [_tiny_bag(np.random.default_rng(0))], "cpu")
    k = config.num_classes
    assert out.image_probs.shape == (1, k) and out.cell_probs.shape == (1, 3, k)
    assert out.attention.shape[:2] == (1, 3) and out.usable.tolist() == [[True, True, False]]
    for values in (out.image_probs, out.cell_probs, out.attention):
        assert np.isfinite(values).all()
    assert ((out.image_probs >= 0) & (out.image_probs <= 1)).all()
    assert np.allclose(out.attention[0, 2], 0.0)  # the unusable cell is left out of the image's pooling
    if family.pixel_maps:
        assert len(out.pixel_maps) == 1 and out.pixel_maps[0].shape[0] == k and out.pixel_maps[0].dtype == np.uint8
    else:
        assert out.pixel_maps is None


@pytest.mark.parametrize("name", family_names())
def test_configs_and_model_folders_round_trip_through_the_registry(name: str, tmp_path) -> None:
    family = get_family(name)
    config = family.config_class()
    assert model_config_from_dict(config.to_dict()) == config
    model = build_model(config)
    save_model_folder(tmp_path, model, np.full(config.num_classes, 0.5), {}, {})
    loaded = load_model(tmp_path)
    assert loaded.config == config and type(loaded.model) is type(model)
    reference = model.state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in loaded.model.state_dict().items())


def test_registry_errors() -> None:
    with pytest.raises(ConfigError, match="unknown model family 'graph'; registered families: crop, dense"):
        get_family("graph")
    with pytest.raises(ValueError, match="model family 'crop' is already registered"):
        register_family(get_family("crop"))
    with pytest.raises(ValueError, match="inputs must be 'crops' or 'fields'"):
        crop = get_family("crop")
        register_family(ModelFamily("other", crop.config_class, "pixels", crop.build, crop.warm_start_config,
                                    crop.training_data, crop.predict_group))
    assert "other" not in family_names()
    with pytest.raises(EncoderWeightsError, match="the crop family starts from a local timm checkpoint file"):
        get_family("crop").warm_start_config(get_family("crop").config_class(), "some_folder")
