"""Batched Cellpose inference: one network pass per image shape per model, masks in input order at each
image's size, the network inputs (channels, rescaling, padding), and the flow-to-mask step.

The networks are tiny random CPnets saved in the bundled format under tmp_path (their masks are arbitrary
but deterministic); the flow-to-mask step is checked with perfect flows computed from known masks.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from cellpose.resnet_torch import CPnet

import segmentation.cellpose_models as cellpose_models
import segmentation.cellpose_segmenter as cellpose_segmenter
from hpa_cells.instance_metrics import average_precision
from hpa_cells.synthetic.dataset import SyntheticConfig, SyntheticGenerator
from segmentation.cellpose_models import CellposeNetSpec, resolve_model, save_bundled_format, sha256_of_file
from segmentation.cellpose_segmenter import (
    CellposeNetRunner,
    CellposeSegmenter,
    CellposeSettings,
    cellpose_input,
    default_diameters,
    normalize_percentile,
)
from segmentation.preprocessing import FieldImageError
from segmentation.result import Segmenter

pytestmark = pytest.mark.usefixtures("no_network", "one_torch_thread")

TINY_NBASE = (2, 8, 16, 32, 32)


def tiny_cpnet(diam_mean: float, seed: int) -> CPnet:
    torch.manual_seed(seed)
    return CPnet(list(TINY_NBASE), 3, sz=3, mkldnn=False, max_pool=True, diam_mean=diam_mean).eval()


@pytest.fixture()
def bundled_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Tiny random cells (diam_mean 30) and nuclei (diam_mean 17) models as the bundled models."""
    folder = tmp_path / "models"
    save_bundled_format(tiny_cpnet(30.0, seed=1), folder / "hpa_cells_cells.safetensors", {"kind": "cells"})
    save_bundled_format(tiny_cpnet(17.0, seed=2), folder / "hpa_cells_nuclei.safetensors", {"kind": "nuclei"})
    monkeypatch.setattr(cellpose_models, "BUNDLED_MODEL_DIR", folder)
    return folder


@pytest.fixture()
def network_calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[tuple[int, ...]]]:
    """Input shapes of every forward pass, per model name; also counts how often networks are built."""
    calls: dict[str, list[tuple[int, ...]]] = {"built": []}
    real_build = cellpose_segmenter.build_network

    def counting_build(spec: CellposeNetSpec, device: torch.device | str = "cpu") -> torch.nn.Module:
        net = real_build(spec, device)
        calls["built"].append((len(calls["built"]),))
        calls[spec.name] = []
        net.register_forward_hook(lambda module, args, output: calls[spec.name].append(tuple(args[0].shape)))
        return net

    monkeypatch.setattr(cellpose_segmenter, "build_network", counting_build)
    return calls


@pytest.fixture(scope="module")
def fields_128() -> list[np.ndarray]:
    """Four synthetic `4,128,128` uint8 fields."""
    generator = SyntheticGenerator(SyntheticConfig(seed=5, size=128))
    return [generator.generate(i).image for i in range(4)]


# ----- batching --------------------------------------------------------------------------------------


def test_one_network_pass_per_shape_and_results_in_input_order(
    bundled_dir: Path, network_calls: dict, fields_128: list[np.ndarray]
) -> None:
    a, b, c, d = fields_128
    narrow = np.ascontiguousarray(b[:, :, :96])  # 128x96: same working size, another shape
    segmenter = CellposeSegmenter(CellposeSettings(diameter_tolerance=None))  # one pass (refinement: below)
    assert isinstance(segmenter, Segmenter)
    results = segmenter.segment_batch([a, narrow, c, d])

    assert [r.cells.shape for r in results] == [(128, 128), (128, 96), (128, 128), (128, 128)]
    assert [r.nuclei.shape for r in results] == [r.cells.shape for r in results]
    assert all(r.cells.dtype == np.int32 and r.n_cells == len(np.unique(r.cells)) - 1 for r in results)
    # Two networks built once each; each ran once per shape group, not once per image.
    assert len(network_calls["built"]) == 2
    # cells: diameter 20 px at working size 128 -> rescale 30/20 = 1.5 -> 192x192 and 192x144, each with an
    # 8 px margin all round (Cellpose's padding) -> 208x208 and 208x160.
    assert network_calls["bundled:hpa_cells_cells"] == [(3, 2, 208, 208), (1, 2, 208, 160)]
    # nuclei: diameter 10 px -> rescale 1.7 -> 218x218 rounded up to 224x224 + margin; 218x163 -> 240x192.
    assert network_calls["bundled:hpa_cells_nuclei"] == [(3, 2, 240, 240), (1, 2, 240, 192)]

    # Each image alone gives exactly its result from the batch: order kept, no batch-mate influence.
    for image, batched in zip([a, narrow, c, d], results, strict=True):
        alone = segmenter.segment_batch([image])[0]
        np.testing.assert_array_equal(alone.cells, batched.cells)
        np.testing.assert_array_equal(alone.nuclei, batched.nuclei)
    assert len(network_calls["built"]) == 2  # runners are reused across batches


def test_batch_outputs_match_single_image_outputs(fields_128: list[np.ndarray]) -> None:
    spec = CellposeNetSpec("tiny", Path("unused"), "safetensors", TINY_NBASE, 30.0, "")
    runner = CellposeNetRunner(spec, 20.0, net=tiny_cpnet(30.0, seed=4))
    inputs = [cellpose_input(image, "cells") for image in fields_128[:3]]
    batched = runner.network_outputs(inputs)
    for x, (flows, cellprob) in zip(inputs, batched, strict=True):
        (flows_alone, cellprob_alone), = runner.network_outputs([x])
        assert flows.shape == (2, 192, 192) and cellprob.shape == (192, 192)
        np.testing.assert_allclose(flows, flows_alone, atol=1e-5)
        np.testing.assert_allclose(cellprob, cellprob_alone, atol=1e-5)


def test_inputs_are_centred_in_a_zero_margin_like_cellpose(fields_128: list[np.ndarray]) -> None:
    spec = CellposeNetSpec("tiny", Path("unused"), "safetensors", TINY_NBASE, 17.0, "")
    net = tiny_cpnet(17.0, seed=4)
    seen: list[torch.Tensor] = []
    net.register_forward_hook(lambda module, args, output: seen.append(args[0].clone()))
    runner = CellposeNetRunner(spec, 10.0, net=net)
    x = cellpose_input(fields_128[0], "nuclei")
    (flows, cellprob), = runner.network_outputs([x])
    batch = seen[0].numpy()
    # 218 px rescaled -> rounded up to 224 (3 px before, 3 after) + 8 px margin on each side = 240.
    assert batch.shape == (1, 2, 240, 240)
    assert flows.shape == (2, 218, 218) and cellprob.shape == (218, 218)  # cropped back to the image
    inside = np.zeros((240, 240), bool)
    inside[11:229, 11:229] = True
    assert not batch[0][:, ~inside].any()
    expected = cv2.resize(x[0], (218, 218), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(batch[0, 0, 11:229, 11:229], expected)


def test_network_outputs_equal_cellpose_run_net(fields_128: list[np.ndarray]) -> None:
    """Same network, same rescale: our whole-image pass gives Cellpose's own `core.run_net` outputs."""
    from cellpose import core

    nbase = (2, 8, 16, 32, 256)  # Cellpose's run_net assumes a style vector of 256
    spec = CellposeNetSpec("tiny256", Path("unused"), "safetensors", nbase, 30.0, "")
    torch.manual_seed(6)
    net = CPnet(list(nbase), 3, sz=3, mkldnn=False, max_pool=True, diam_mean=30.0).eval()
    runner = CellposeNetRunner(spec, 20.0, net=net)  # rescale 1.5: 128 -> 192 px, one 208 px tile in Cellpose
    x = cellpose_input(fields_128[1], "cells")
    (flows, cellprob), = runner.network_outputs([x])
    theirs, _ = core.run_net(net, x.transpose(1, 2, 0)[np.newaxis], rsz=1.5)
    np.testing.assert_allclose(flows, theirs[0, :, :, :2].transpose(2, 0, 1), atol=1e-4)
    np.testing.assert_allclose(cellprob, theirs[0, :, :, 2], atol=1e-4)


def test_diameter_setting_sets_the_rescale(bundled_dir: Path, network_calls: dict, fields_128: list[np.ndarray]) -> None:
    segmenter = CellposeSegmenter(CellposeSettings(cell_diameter=60.0, nucleus_diameter=17.0, diameter_tolerance=None))
    segmenter.segment_batch(fields_128[:2])
    assert network_calls["bundled:hpa_cells_cells"] == [(2, 2, 80, 80)]  # 128 * 30/60 = 64, + 2 x 8 margin
    assert network_calls["bundled:hpa_cells_nuclei"] == [(2, 2, 144, 144)]  # 128 * 17/17 = 128, + 2 x 8 margin


def test_segment_batch_checks_its_inputs(bundled_dir: Path, fields_128: list[np.ndarray]) -> None:
    segmenter = CellposeSegmenter()
    with pytest.raises(FieldImageError, match=r"^image 1 of the batch: expected shape 4,H,W .*got \(3, 128, 128\)"):
        segmenter.segment_batch([fields_128[0], fields_128[1][:3]])
    with pytest.raises(FieldImageError, match="^image 0 of the batch: expected dtype uint8 or uint16, got float32"):
        segmenter.segment_batch([fields_128[0].astype(np.float32)])
    assert segmenter.segment_batch([]) == []


def test_runner_refuses_a_non_positive_diameter() -> None:
    spec = CellposeNetSpec("tiny", Path("unused"), "safetensors", TINY_NBASE, 30.0, "")
    with pytest.raises(ValueError, match="^diameter must be positive, got 0$"):
        CellposeNetRunner(spec, 0, net=tiny_cpnet(30.0, seed=0))


# ----- flows to masks -----------------------------------------------------------------------------------


def test_perfect_flows_give_the_true_masks_back_at_full_size() -> None:
    """Flows made from a known mask at network scale (half size) must give that mask back, resized to 256."""
    from cellpose.dynamics import labels_to_flows

    truth = SyntheticGenerator(SyntheticConfig(seed=3, size=256)).generate(0).cell_mask.astype(np.int32)
    small = cv2.resize(truth.astype(np.uint16), (128, 128), interpolation=cv2.INTER_NEAREST).astype(np.int32)
    flows = labels_to_flows([small], device=torch.device("cpu"))[0]  # labels, cell probability, dy, dx
    spec = CellposeNetSpec("oracle", Path("unused"), "safetensors", TINY_NBASE, 15.0, "")
    runner = CellposeNetRunner(spec, 30.0, net=tiny_cpnet(15.0, seed=0))  # rescale 0.5
    masks = runner.masks_from_outputs(5.0 * flows[2:], np.where(flows[1] > 0.5, 6.0, -6.0), (256, 256))
    assert masks.shape == (256, 256) and masks.dtype == np.int32
    ap, tp, fp, fn = average_precision([truth], [masks], thresholds=(0.5, 0.75))
    n_true = len(np.unique(truth)) - 1
    assert fp[0, 0] == 0
    assert tp[0, 0] >= n_true - 1  # at most one border sliver may fall under the minimum size
    assert ap[0, 1] >= 0.9


# ----- inputs, diameters, provenance ------------------------------------------------------------------


def ramp_field(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(4, 32, 40), dtype=np.uint8)


def test_cells_input_is_microtubule_er_mean_then_nucleus() -> None:
    image = ramp_field(0)
    x = cellpose_input(image, "cells", use_er=True)
    assert x.shape == (2, 32, 40) and x.dtype == np.float32
    cyto = 0.5 * (image[0].astype(np.float32) + image[3].astype(np.float32))
    np.testing.assert_allclose(x[0], normalize_percentile(cyto), rtol=1e-6)
    np.testing.assert_allclose(x[1], normalize_percentile(image[2]), rtol=1e-6)
    without_er = cellpose_input(image, "cells", use_er=False)
    np.testing.assert_allclose(without_er[0], normalize_percentile(image[0]), rtol=1e-6)
    np.testing.assert_array_equal(without_er[1], x[1])
    image[1] = 255 - image[1]  # the protein channel is never used
    np.testing.assert_array_equal(cellpose_input(image, "cells"), x)


def test_nuclei_input_is_nucleus_then_zeros() -> None:
    image = ramp_field(1)
    x = cellpose_input(image, "nuclei")
    np.testing.assert_allclose(x[0], normalize_percentile(image[2]), rtol=1e-6)
    assert x.shape == (2, 32, 40) and not x[1].any()


def test_flat_channels_become_zeros_and_bad_kinds_are_refused() -> None:
    image = ramp_field(2)
    image[2] = 7
    x = cellpose_input(image, "cells")
    assert not x[1].any() and x[0].any()
    assert not cellpose_input(image, "nuclei").any()
    with pytest.raises(ValueError, match="^kind must be 'cells' or 'nuclei', got 'nucleus'$"):
        cellpose_input(image, "nucleus")


def test_normalize_percentile_maps_1st_and_99th_percentiles_to_0_and_1() -> None:
    channel = np.arange(101, dtype=np.uint8).reshape(1, 101)  # percentiles are the values themselves
    out = normalize_percentile(channel)
    np.testing.assert_allclose(out[0, [0, 1, 50, 99, 100]], [-1 / 98, 0.0, 49 / 98, 1.0, 1 + 1 / 98], rtol=1e-5)


def test_default_diameters_scale_with_working_size() -> None:
    assert default_diameters(512) == (80.0, 40.0)
    assert default_diameters(256) == (40.0, 20.0)
    assert default_diameters(1024) == (160.0, 80.0)
    assert default_diameters(128) == (20.0, 10.0)


def test_provenance_is_json_and_names_the_weights(bundled_dir: Path) -> None:
    segmenter = CellposeSegmenter(CellposeSettings(cell_diameter=70.0))
    record = json.loads(json.dumps(segmenter.provenance()))
    assert record["segmenter"] == "cellpose"
    assert record["settings"] == {"cell_model": "bundled", "nucleus_model": "bundled", "cell_diameter": 70.0,
                                  "nucleus_diameter": None, "diameter_tolerance": None, "use_er": True,
                                  "device": "cpu", "cell_assembly": "nuclei"}
    assert record["flow"]["flow_threshold"] == 0.4
    assert record["seeded"]["cellprob_threshold"] == 0.0 and record["seeded"]["flow_divergence_weight"] == 1.0
    assert record["cell_model"]["sha256"] == sha256_of_file(bundled_dir / "hpa_cells_cells.safetensors")
    assert record["nucleus_model"]["sha256"] == sha256_of_file(bundled_dir / "hpa_cells_nuclei.safetensors")
    assert record["cell_model"]["nbase"] == list(TINY_NBASE)
    assert record["nucleus_model"]["diam_mean"] == 17.0
    assert resolve_model("bundled", "cells").sha256 == record["cell_model"]["sha256"]


def test_diameter_is_refined_from_the_data(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cheap pass measures the objects; 1.6x the assumed diameter means one pass at the measured diameter,
    objects of the assumed size mean one batched pass at the assumed diameter."""
    spec = CellposeNetSpec("tiny", Path("tiny"), "safetensors", TINY_NBASE, 30.0, "")
    runner = CellposeNetRunner(spec, diameter=20.0, net=tiny_cpnet(30.0, seed=1))
    big = np.zeros((128, 128), np.int32)
    for k, (y, x) in enumerate([(30, 30), (30, 90), (90, 30), (90, 90)], start=1):
        yy, xx = np.ogrid[:128, :128]
        big[(yy - y) ** 2 + (xx - x) ** 2 <= 16**2] = k  # 4 discs of diameter ~32 px (1.6x, under the 2x clip)
    calls: list[tuple[int, float | None]] = []
    real_outputs = runner.network_outputs

    def recording_outputs(inputs, rescale=None):
        calls.append((len(inputs), rescale))
        return real_outputs(inputs, rescale)

    monkeypatch.setattr(runner, "network_outputs", recording_outputs)
    monkeypatch.setattr(runner, "masks_from_outputs", lambda flows, prob, shape: big)
    inputs = [np.zeros((2, 128, 128), np.float32)] * 2
    assert all(m is big for m in runner.segment(inputs))  # no tolerance: one batched pass
    assert calls == [(2, None)]
    calls.clear()
    runner.segment(inputs, refine_tolerance=1.25)
    from cellpose.utils import diameters

    measured = float(diameters(big)[0])
    cheap = (2, pytest.approx(1.5 * cellpose_segmenter.SIZE_ESTIMATE_SCALE))
    assert calls == [cheap, (1, pytest.approx(30.0 / measured)), (1, pytest.approx(30.0 / measured))]
    calls.clear()
    runner.diameter = measured  # objects already at the assumed size: the cheap pass, then one batched pass
    runner.segment(inputs, refine_tolerance=1.25)
    assert calls == [(2, pytest.approx(30.0 / measured * cellpose_segmenter.SIZE_ESTIMATE_SCALE)), (2, None)]
