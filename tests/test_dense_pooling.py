"""Cell pooling of the dense model: each cell reads only its own pixels (hand-computed values), padding and
background never leak in (values and gradients), and the whole dense model is invariant to padding."""

from __future__ import annotations

import math

import pytest
import torch

from mil.cell_pooling import pool_pixels_into_cells
from mil.config import ConfigError, DenseConfig
from mil.dense_model import DenseBatch, DenseMILModel
from mil.families import model_config_from_dict
from mil.pooling import list_heads

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# one 2x3 field, two classes: cell 5 = top-left two pixels, cell 7 = the bottom row, (0, 2) is background
PIXELS = torch.tensor([[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]],
                       [[0.0, 0.0, 10.0], [-1.0, -1.0, -1.0]]])[None]  # 1,2,2,3
LABELS = torch.tensor([[[5, 5, 0], [7, 7, 7]]])
CELL_IDS = torch.tensor([[7, 5, 0]])
VALID = torch.tensor([[True, True, False]])


def test_mean_pooling_reads_only_each_cells_pixels() -> None:
    pooled = pool_pixels_into_cells(PIXELS, LABELS, CELL_IDS, VALID, "mean")
    expected = torch.tensor([[[5.0, -1.0], [1.5, 0.0], [0.0, 0.0]]])  # cell 7, cell 5, padding
    torch.testing.assert_close(pooled, expected)


def test_lse_pooling_matches_the_formula_and_tends_to_mean_and_max() -> None:
    pooled = pool_pixels_into_cells(PIXELS, LABELS, CELL_IDS, VALID, "lse", sharpness=1.0)
    cell7 = [math.log((math.e ** 4 + math.e ** 5 + math.e ** 6) / 3), -1.0]
    cell5 = [math.log((math.e + math.e ** 2) / 2), 0.0]
    torch.testing.assert_close(pooled, torch.tensor([[cell7, cell5, [0.0, 0.0]]]))
    sharp = pool_pixels_into_cells(PIXELS, LABELS, CELL_IDS, VALID, "lse", sharpness=200.0)
    torch.testing.assert_close(sharp[0, :2, 0], torch.tensor([6.0, 2.0]), atol=0.01, rtol=0)  # the cell's max
    soft = pool_pixels_into_cells(PIXELS, LABELS, CELL_IDS, VALID, "lse", sharpness=1e-4)
    torch.testing.assert_close(soft[0, :2, 0], torch.tensor([5.0, 1.5]), atol=1e-3, rtol=0)  # the cell's mean


def test_lse_is_stable_for_large_logits() -> None:
    pooled = pool_pixels_into_cells(PIXELS * 1000, LABELS, CELL_IDS, VALID, "lse", sharpness=5.0)
    assert torch.isfinite(pooled).all()
    torch.testing.assert_close(pooled[0, 0, 0], torch.tensor(6000 - math.log(3) / 5), atol=1e-2, rtol=0)


@pytest.mark.parametrize("mode", ["mean", "lse"])
def test_padding_and_other_images_do_not_change_a_cells_logits(mode: str) -> None:
    """The field alone equals the same field in a batch beside a larger one, with extra padded slots whose ids
    name real cells, and whatever the background pixels hold."""
    alone = pool_pixels_into_cells(PIXELS, LABELS, CELL_IDS[:, :2], VALID[:, :2], mode)
    pixels = 100 * torch.randn(2, 2, 2, 3)
    pixels[0] = PIXELS[0]
    pixels[0, :, 0, 2] = -1e4  # background of the first field: never read
    labels = torch.stack([LABELS[0], torch.tensor([[1, 1, 2], [3, 3, 2]])])
    cell_ids = torch.tensor([[7, 5, 7, 5, 7], [1, 2, 3, 0, 0]])  # padded slots of field 0 repeat real ids
    valid = torch.tensor([[True, True, False, False, False], [True, True, True, False, False]])
    batched = pool_pixels_into_cells(pixels, labels, cell_ids, valid, mode)
    torch.testing.assert_close(batched[0, :2], alone[0])
    assert (batched[~valid] == 0).all()


@pytest.mark.parametrize("mode", ["mean", "lse"])
def test_gradients_reach_only_the_pixels_of_pooled_cells(mode: str) -> None:
    pixels = PIXELS.clone().requires_grad_(True)
    only_cell_5 = torch.tensor([[False, True, False]])
    pool_pixels_into_cells(pixels, LABELS, CELL_IDS, only_cell_5, mode).sum().backward()
    reached = pixels.grad.abs().sum(dim=1)[0] > 0
    assert reached.tolist() == [[True, True, False], [False, False, False]]


def test_cells_without_pixels_and_repeated_ids_are_errors() -> None:
    with pytest.raises(ValueError, match="cell id 9 of batch item 0 has no pixels in its label map"):
        pool_pixels_into_cells(PIXELS, LABELS, torch.tensor([[7, 9]]), torch.tensor([[True, True]]))
    with pytest.raises(ValueError, match="cell id 7 appears twice among the valid cells of batch item 0"):
        pool_pixels_into_cells(PIXELS, LABELS, torch.tensor([[7, 7]]), torch.tensor([[True, True]]))
    with pytest.raises(ValueError, match="unknown cell pooling 'max'"):
        pool_pixels_into_cells(PIXELS, LABELS, CELL_IDS, VALID, "max")
    with pytest.raises(ValueError, match="cell_labels must be 1,2,3"):
        pool_pixels_into_cells(PIXELS, LABELS[:, :1], CELL_IDS, VALID)


def _tiny(head: str = "class_gated_attention", cell_pool: str = "mean", arch: str = "fpn") -> DenseMILModel:
    torch.manual_seed(0)
    return DenseMILModel(DenseConfig(arch=arch, encoder="tu-test_resnet", head=head, cell_pool=cell_pool,
                                     input_size=64)).eval()


def _field_batch(seed: int, n_cells: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A 64 px field with `n_cells` vertical stripes as cells (ids 1..n), background at the right edge."""
    generator = torch.Generator().manual_seed(seed)
    image = torch.rand(4, 64, 64, generator=generator)
    labels = torch.zeros(64, 64, dtype=torch.long)
    width = 56 // n_cells
    for cell in range(n_cells):
        labels[:, cell * width : (cell + 1) * width] = cell + 1
    return image, labels


@pytest.mark.parametrize(("head", "cell_pool"), [(h, "mean") for h in list_heads()] + [("attention", "lse")])
def test_dense_model_outputs_do_not_depend_on_padding(head: str, cell_pool: str) -> None:
    model = _tiny(head, cell_pool)
    image_a, labels_a = _field_batch(1, 3)
    image_b, labels_b = _field_batch(2, 6)
    alone = model(DenseBatch(image_a[None], labels_a[None], torch.tensor([[1, 2, 3]]), torch.ones(1, 3, dtype=torch.bool)))
    ids = torch.tensor([[1, 2, 3, 1, 2, 3], [1, 2, 3, 4, 5, 6]])
    valid = torch.tensor([[True] * 3 + [False] * 3, [True] * 6])
    batched = model(DenseBatch(torch.stack([image_a, image_b]), torch.stack([labels_a, labels_b]), ids, valid))
    assert batched.pixel_logits.shape == (2, 28, 64, 64)
    torch.testing.assert_close(batched.image_logits[0], alone.image_logits[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched.cell_logits[0, :3], alone.cell_logits[0], atol=1e-5, rtol=1e-5)
    assert (batched.cell_logits[0, 3:] == 0).all()
    assert (batched.attention[0, 3:] == 0).all()


def test_cell_logits_are_the_pooled_pixel_logits() -> None:
    """The head pools the cell logits it is given: the model's cell logits are each cell's mean pixel logits."""
    model = _tiny("attention", "mean", arch="unet")
    image, labels = _field_batch(3, 2)
    out = model(DenseBatch(image[None], labels[None], torch.tensor([[2, 1]]), torch.ones(1, 2, dtype=torch.bool)))
    by_hand = torch.stack([out.pixel_logits[0][:, labels == cell].mean(dim=1) for cell in (2, 1)])
    torch.testing.assert_close(out.cell_logits[0], by_hand, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.image_logits[0], (out.attention[0, :, None] * by_hand).sum(dim=0),
                               atol=1e-5, rtol=1e-5)


def test_dense_config_validation_and_round_trip() -> None:
    config = DenseConfig(arch="unet", encoder="tu-resnet10t", cell_pool="lse", input_size=128)
    assert model_config_from_dict(config.to_dict()) == config
    assert model_config_from_dict({"encoder": "resnet10t"}).family == "crop"  # folders written before families
    with pytest.raises(ConfigError, match="input_size must be a multiple of 32"):
        DenseConfig(input_size=100)
    with pytest.raises(ConfigError, match="unknown cell_pool 'max'"):
        DenseConfig(cell_pool="max")
    with pytest.raises(ConfigError, match="unknown dense arch 'deeplab'"):
        DenseConfig(arch="deeplab")
    with pytest.raises(ConfigError, match=r"cfg.json: unknown dense model config keys \['depth'\]"):
        model_config_from_dict({**config.to_dict(), "depth": 3}, source="cfg.json")
    with pytest.raises(ConfigError, match="unknown model family 'graph'"):
        model_config_from_dict({"family": "graph"})
    with pytest.raises(ValueError, match="encoder 'tu-no_such_net' cannot be built for fpn"):
        DenseMILModel(DenseConfig(encoder="tu-no_such_net"))
    with pytest.raises(ConfigError, match=r"decoder_channels for fpn must be a multiple of 64 and >= 64 \(or None\), "
                                          "got 32"):
        DenseConfig(decoder_channels=32)
    with pytest.raises(ConfigError, match=r"decoder_channels for unet must be a multiple of 2 and >= 16"):
        DenseConfig(arch="unet", decoder_channels=15)
    assert DenseConfig(arch="unet", decoder_channels=32).decoder_channels == 32


def test_decoder_width_and_configs_written_before_it() -> None:
    """decoder_channels sets smp's decoder widths; a config.json without the key loads with smp's defaults."""
    from mil.dense_model import create_dense_network

    fpn = create_dense_network("fpn", "tu-test_resnet", 28, 64)
    assert fpn.segmentation_head[0].in_channels == 32  # the segmentation branch gets half the pyramid width
    assert create_dense_network("fpn", "tu-test_resnet", 28, None).segmentation_head[0].in_channels == 128
    unet = create_dense_network("unet", "tu-test_resnet", 28, 64)
    assert [block.conv2[0].out_channels for block in unet.decoder.blocks] == [64, 32, 16, 16, 16]
    old = {k: v for k, v in DenseConfig().to_dict().items() if k != "decoder_channels"}
    assert DenseConfig().decoder_channels == 64 and model_config_from_dict(old).decoder_channels is None
