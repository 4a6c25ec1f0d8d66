"""Encoders, the MIL model (padding invariance, exact decomposition) and the model folder round trip."""

from __future__ import annotations

import json
import struct
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models import adapt_input_conv

from hpa_cells.classes import NUM_CLASSES
from mil.config import ConfigError, MILConfig
from mil.encoders import EncoderWeightsError, create_encoder
from mil.model import BagBatch, MILModel
from mil.model_folder import FORMAT_VERSION, ModelFolderError, load_model, save_model_folder
from mil.pooling import list_heads

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CROP = 16
TINY = MILConfig(encoder="resnet10t", input_size=16, dropout=0.0)


def _model(config: MILConfig = TINY, seed: int = 0) -> MILModel:
    torch.manual_seed(seed)
    return MILModel(config)


def _batch(lengths: list[int], n: int | None = None, seed: int = 0, padding_value: float = 0.0) -> BagBatch:
    """Random bags of CROP px crops padded to `n` cells; padded crops/masks hold `padding_value`."""
    n = max(lengths) if n is None else n
    gen = torch.Generator().manual_seed(seed)
    valid = torch.arange(n)[None, :] < torch.tensor(lengths)[:, None]
    crops = torch.rand(len(lengths), n, 4, CROP, CROP, generator=gen)
    masks = (torch.rand(len(lengths), n, CROP, CROP, generator=gen) > 0.3).float()
    crops[~valid] = padding_value
    masks[~valid] = padding_value
    return BagBatch(crops, masks, valid, torch.zeros(len(lengths), NUM_CLASSES))


def _embed_bag_in_batch(bag: BagBatch, other: BagBatch, n: int) -> BagBatch:
    """A 2-bag batch padded to `n` cells: `other` (longer) first, then the one bag of `bag`, padding garbage."""
    batch = _batch([other.valid.shape[1], int(bag.valid.sum())], n=n, seed=7, padding_value=1e3)
    batch.crops[0, : other.valid.shape[1]] = other.crops[0]
    batch.masks[0, : other.valid.shape[1]] = other.masks[0]
    k = int(bag.valid.sum())
    batch.crops[1, :k] = bag.crops[0, :k]
    batch.masks[1, :k] = bag.masks[0, :k]
    return batch


# ----- encoders ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet10t", "mobilenetv3_small_050"])
@pytest.mark.parametrize("in_chans", [4, 5])
def test_create_encoder_embeds_cells(name: str, in_chans: int) -> None:
    encoder = create_encoder(name, in_chans=in_chans).eval()
    with torch.no_grad():
        out = encoder(torch.rand(3, in_chans, 32, 32))
    assert out.shape == (3, encoder.num_features)
    assert torch.isfinite(out).all()


def test_mobilenet_encoder_fits_a_mil_head() -> None:
    """num_features must be what forward returns (mobilenetv3 has a head conv after `num_features`)."""
    model = _model(replace(TINY, encoder="mobilenetv3_small_050"))
    assert model.encoder.num_features == 1024
    out = model.eval()(_batch([3, 2]))
    assert out.image_logits.shape == (2, NUM_CLASSES)


def test_unknown_encoder_and_wrong_input_are_errors() -> None:
    with pytest.raises(ValueError, match="unknown timm encoder 'resnet_nope'; see timm.list_models()"):
        create_encoder("resnet_nope")
    encoder = create_encoder("resnet10t", in_chans=5)
    with pytest.raises(ValueError, match=r"encoder resnet10t expects N,5,S,S crops, got \(2, 4, 16, 16\)"):
        encoder(torch.rand(2, 4, 16, 16))


@pytest.fixture(scope="module")
def imagenet_style_state() -> dict[str, torch.Tensor]:
    """A 3-channel resnet10t state dict with its 1000-class classifier, as a timm checkpoint holds."""
    torch.manual_seed(3)
    return {k: v.clone() for k, v in timm.create_model("resnet10t", pretrained=False, in_chans=3).state_dict().items()}


@pytest.mark.parametrize("fmt", ["safetensors", "pth", "pth-wrapped"])
@pytest.mark.parametrize("in_chans", [4, 5])
def test_local_weights_adapt_the_first_conv(tmp_path: Path, imagenet_style_state: dict, fmt: str,
                                            in_chans: int) -> None:
    state = imagenet_style_state
    if fmt == "safetensors":
        path = tmp_path / "resnet10t.safetensors"
        save_file(state, str(path))
    elif fmt == "pth":
        path = tmp_path / "resnet10t.pth"
        torch.save(state, path)
    else:  # a training checkpoint: {"state_dict": ...} with DataParallel's "module." prefix
        path = tmp_path / "resnet10t_ckpt.pth"
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    encoder = create_encoder("resnet10t", in_chans=in_chans, weights=path)
    loaded = encoder.backbone.state_dict()
    first = "conv1.0.weight"
    assert loaded[first].shape == (state[first].shape[0], in_chans, *state[first].shape[2:])
    torch.testing.assert_close(loaded[first], adapt_input_conv(in_chans, state[first]))
    torch.testing.assert_close(loaded[first][:, :3], state[first] * 3 / in_chans)
    assert "fc.weight" not in loaded
    for key, value in loaded.items():
        if key != first:
            assert torch.equal(value, state[key]), key


def test_local_weights_errors_name_the_file(tmp_path: Path, imagenet_style_state: dict) -> None:
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(EncoderWeightsError, match=f"encoder weights not found: {missing}"):
        create_encoder("resnet10t", weights=missing)
    other = tmp_path / "mobilenet.safetensors"
    save_file(timm.create_model("mobilenetv3_small_050", pretrained=False).state_dict(), str(other))
    with pytest.raises(EncoderWeightsError, match=f"(?s){other} does not fit encoder ResNet: .*size mismatch for bn1.weight"):
        create_encoder("resnet10t", weights=other)
    partial = tmp_path / "partial.safetensors"
    save_file({k: v for k, v in imagenet_style_state.items() if k != "layer1.0.bn1.weight"}
              | {"extra.weight": torch.zeros(2)}, str(partial))
    with pytest.raises(EncoderWeightsError) as info:
        create_encoder("resnet10t", weights=partial)
    assert str(info.value) == (f"{partial} does not fit encoder ResNet: missing ['layer1.0.bn1.weight'], "
                               "unexpected ['extra.weight']")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(EncoderWeightsError, match=f"{garbage} could not be read as a torch state dict"):
        create_encoder("resnet10t", weights=garbage)


def test_a_pickled_module_is_refused_not_unpickled(tmp_path: Path) -> None:
    path = tmp_path / "whole_model.pth"
    torch.save(timm.create_model("resnet10t", pretrained=False), path)
    with pytest.raises(EncoderWeightsError, match=f"{path} could not be read as a torch state dict"):
        create_encoder("resnet10t", weights=path)


# ----- config -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"head": "nope"}, "unknown head 'nope'; registered heads: attention, class_gated_attention"),
        ({"input_size": 20}, "input_size must be a multiple of 8 and >= 16, got 20"),
        ({"input_size": 8}, "input_size must be a multiple of 8 and >= 16, got 8"),
        ({"num_classes": 0}, "num_classes must be positive, got 0"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\), got 1.0"),
    ],
)
def test_config_validation(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        MILConfig(**{**TINY.to_dict(), **changes})


def test_config_round_trips_through_a_dict_and_rejects_unknown_keys() -> None:
    config = replace(TINY, head="instance", head_kwargs={"pool": "attention"})
    assert MILConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert config.in_chans == 5 and replace(config, use_mask_channel=False).in_chans == 4
    with pytest.raises(ConfigError, match=r"cfg.json: unknown MIL config keys \['colour', 'depth'\]"):
        MILConfig.from_dict({**config.to_dict(), "depth": 3, "colour": 1}, source="cfg.json")


# ----- the model ----------------------------------------------------------------------------------------


def test_encoder_input_adds_the_mask_channel_and_resizes() -> None:
    model = _model(replace(TINY, input_size=16))
    crops, masks = torch.rand(2, 4, 32, 32), torch.ones(2, 32, 32)
    x = model.encoder_input(crops, masks)
    assert x.shape == (2, 5, 16, 16)
    torch.testing.assert_close(x[:, 4], torch.ones(2, 16, 16))
    torch.testing.assert_close(x[:, :4], torch.nn.functional.avg_pool2d(crops, 2))
    no_mask = _model(replace(TINY, use_mask_channel=False))
    assert no_mask.encoder_input(crops[:, :, :16, :16], masks[:, :16, :16]).shape == (2, 4, 16, 16)


@pytest.mark.parametrize("head", list_heads())
def test_model_outputs_and_eval_padding_invariance(head: str) -> None:
    """Eval mode: a bag alone == the same bag padded (with garbage) in a batch beside a longer bag."""
    model = _model(replace(TINY, head=head)).eval()
    bag = _batch([3], seed=1)
    longer = _batch([6], seed=2)
    with torch.no_grad():
        alone = model(bag)
        padded = model(_embed_bag_in_batch(bag, longer, n=8))
        longer_alone = model(longer)
    assert alone.image_logits.shape == (1, NUM_CLASSES) and alone.cell_logits.shape == (1, 3, NUM_CLASSES)
    assert padded.attention.shape[:2] == (2, 8)
    torch.testing.assert_close(padded.image_logits[1], alone.image_logits[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded.cell_logits[1, :3], alone.cell_logits[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded.attention[1, :3], alone.attention[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded.image_logits[0], longer_alone.image_logits[0], atol=1e-5, rtol=1e-5)
    assert (padded.attention[1, 3:] == 0).all() and (padded.cell_logits[1, 3:] == 0).all()


def test_train_mode_padding_never_reaches_the_encoder() -> None:
    """Train mode (batch-norm on batch statistics): outputs depend only on the real cells: padded content
    and the amount of padding change nothing, and the encoder sees exactly the real cells."""
    model = _model(replace(TINY, head="class_gated_attention")).train()
    seen: list[int] = []
    model.encoder.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].shape[0]))
    tight = _batch([5, 2], seed=4)
    loose = _batch([5, 2], n=9, seed=4, padding_value=1e3)
    loose.crops[:, :5], loose.masks[:, :5] = tight.crops, tight.masks
    loose.crops[~loose.valid], loose.masks[~loose.valid] = 1e3, 1e3
    a, b = model(tight), model(loose)
    assert seen == [7, 7]
    torch.testing.assert_close(b.image_logits, a.image_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b.cell_logits[:, :5], a.cell_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b.attention[:, :5], a.attention, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("head", list_heads())
def test_padded_crops_get_exactly_zero_gradient(head: str) -> None:
    model = _model(replace(TINY, head=head)).train()
    batch = _batch([4, 1, 3], n=5, seed=5, padding_value=0.5)
    batch.crops.requires_grad_(True)
    batch.masks.requires_grad_(True)
    model(batch).image_logits.sum().backward()
    assert (batch.crops.grad[~batch.valid] == 0).all()
    assert (batch.masks.grad[~batch.valid] == 0).all()
    assert batch.crops.grad[batch.valid].abs().sum() > 0


@pytest.mark.parametrize("head", ["attention", "gated_attention", "class_gated_attention", "mean"])
def test_model_image_logits_decompose_over_cells(head: str) -> None:
    model = _model(replace(TINY, head=head)).eval()
    with torch.no_grad():
        out = model(_batch([5, 2], seed=6))
    weights = out.attention if out.attention.ndim == 3 else out.attention.unsqueeze(-1)
    torch.testing.assert_close((weights * out.cell_logits).sum(dim=1), out.image_logits, atol=1e-5, rtol=0)


def test_embed_instances_puts_zeros_at_padding() -> None:
    model = _model().eval()
    batch = _batch([2, 4], seed=8, padding_value=1e3)
    with torch.no_grad():
        embeddings = model.embed_instances(batch)
        direct = model.embed_cells(batch.crops[1], batch.masks[1])
    assert embeddings.shape == (2, 4, model.encoder.num_features)
    assert (embeddings[0, 2:] == 0).all()
    torch.testing.assert_close(embeddings[1], direct, atol=1e-5, rtol=1e-5)


# ----- the model folder ---------------------------------------------------------------------------------


def _saved_folder(tmp_path: Path) -> tuple[Path, MILModel, np.ndarray]:
    config = replace(TINY, head="instance", head_kwargs={"pool": "attention", "hidden": 32})
    model = _model(config).eval()
    thresholds = np.linspace(0.1, 0.9, NUM_CLASSES)
    folder = save_model_folder(tmp_path / "model", model, thresholds, {"val_macro_f1": 0.5},
                               training={"epochs": 2, "seed": 0})
    return folder, model, thresholds


def test_model_folder_round_trip(tmp_path: Path) -> None:
    folder, model, thresholds = _saved_folder(tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json", "metrics.json", "thresholds.json", "weights.safetensors"]
    loaded = load_model(folder)
    assert loaded.config == model.config
    assert not loaded.model.training
    np.testing.assert_array_equal(loaded.thresholds, thresholds)
    assert loaded.metrics == {"val_macro_f1": 0.5}
    assert loaded.training == {"epochs": 2, "seed": 0}
    batch = _batch([3, 5], seed=9)
    with torch.no_grad():
        a, b = model(batch), loaded.model(batch)
    assert torch.equal(a.image_logits, b.image_logits)
    assert torch.equal(a.cell_logits, b.cell_logits)
    assert torch.equal(a.attention, b.attention)


def test_weights_are_safetensors_not_pickle(tmp_path: Path) -> None:
    folder, model, _ = _saved_folder(tmp_path)
    raw = (folder / "weights.safetensors").read_bytes()
    (header_length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_length])
    assert raw[8:9] == b"{"
    assert header["__metadata__"] == {"format_version": str(FORMAT_VERSION)}
    assert set(header) - {"__metadata__"} == set(model.state_dict())
    assert b"\x80\x04" not in raw[:2]  # no pickle protocol marker at the start


def test_model_folder_errors(tmp_path: Path) -> None:
    folder, _, _ = _saved_folder(tmp_path)
    config_path = folder / "config.json"
    record = json.loads(config_path.read_text())

    config_path.write_text(json.dumps({**record, "format_version": 99}))
    with pytest.raises(ModelFolderError) as info:
        load_model(folder)
    assert str(info.value) == f"{config_path}: format_version 99, this code reads {FORMAT_VERSION}"

    config_path.write_text(json.dumps({**record, "model": {**record["model"], "width": 3}}))
    with pytest.raises(ConfigError) as info:
        load_model(folder)
    assert str(info.value) == f"{config_path}: unknown MIL config keys ['width']"

    other_head = {**record["model"], "head_kwargs": {"pool": "attention", "hidden": 64}}
    config_path.write_text(json.dumps({**record, "model": other_head}))
    with pytest.raises(ModelFolderError, match=f"{folder / 'weights.safetensors'} does not fit the architecture"):
        load_model(folder)

    config_path.write_text("{not json")
    with pytest.raises(ModelFolderError, match=f"{config_path}: invalid JSON"):
        load_model(folder)

    (folder / "thresholds.json").unlink()
    (folder / "metrics.json").unlink()
    with pytest.raises(ModelFolderError) as info:
        load_model(folder)
    assert str(info.value) == f"{folder} is not a complete model folder: missing thresholds.json, metrics.json"
