"""The `nuclei` cell assembly: cells grown from nuclei over Cellpose's cell probability (segmentation.seeded_cells).

Hand-made fields with known nuclei, probability and flow maps check where cells go and where their borders fall;
the bundled models check the whole segmenter on a synthetic field and, when present, on the real HPA fields.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hpa_cells.instance_metrics import average_precision
from segmentation.cellpose_models import CellposeNetSpec
from segmentation.cellpose_segmenter import CellposeNetRunner, CellposeSegmenter, CellposeSettings
from segmentation.seeded_cells import SeededCellSettings, grow_cells_from_nuclei, median_nucleus_diameter

pytestmark = pytest.mark.usefixtures("no_network", "one_torch_thread")


def two_cell_field(size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A flat `4,size,size` field, two nuclei (ids 1 left, 2 right, radius 5) and cell logits that are +4 on a
    band of rows 16-47 (the cells) and -4 elsewhere."""
    image = np.full((4, size, size), 100, np.uint8)
    yy, xx = np.mgrid[:size, :size]
    nuclei = np.zeros((size, size), np.int32)
    nuclei[(yy - 32) ** 2 + (xx - 16) ** 2 <= 25] = 1
    nuclei[(yy - 32) ** 2 + (xx - 48) ** 2 <= 25] = 2
    logits = np.where((yy >= 16) & (yy < 48), 4.0, -4.0).astype(np.float32)
    return image, nuclei, logits


def test_each_cell_grows_from_its_own_nucleus_over_the_foreground_only() -> None:
    image, nuclei, logits = two_cell_field()
    cells = grow_cells_from_nuclei(image, nuclei, logits, SeededCellSettings())
    assert cells.dtype == np.int32 and sorted(np.unique(cells).tolist()) == [0, 1, 2]
    np.testing.assert_array_equal(cells[nuclei > 0], nuclei[nuclei > 0])  # cell k holds nucleus k
    assert not cells[:16].any() and not cells[48:].any()  # below the threshold: background
    assert (cells[16:48] > 0).all()  # the whole foreground band is reached from the two nuclei
    # flat signal and probability: the border is where the distances to the two nuclei are equal (x = 32, a tie)
    assert (cells[16:48, :32] == 1).all() and (cells[16:48, 33:] == 2).all()


def test_the_border_follows_the_flow_divergence_ridge() -> None:
    image, nuclei, logits = two_cell_field()
    divergence = np.zeros(logits.shape, np.float32)
    divergence[:, 38:40] = 1.0  # flows diverge at x = 38-39: the network puts the border there
    cells = grow_cells_from_nuclei(image, nuclei, logits, SeededCellSettings(flow_divergence_weight=5.0),
                                   flow_divergence=divergence)
    assert (cells[16:48, 33:38] == 1).all()  # without the ridge these pixels went to cell 2
    assert (cells[16:48, 40:] == 2).all()
    ignored = grow_cells_from_nuclei(image, nuclei, logits, SeededCellSettings(flow_divergence_weight=0.0),
                                     flow_divergence=divergence)
    assert (ignored[16:48, 33:] == 2).all()


def test_no_nuclei_no_cells_and_mismatched_maps_are_named() -> None:
    image, nuclei, logits = two_cell_field()
    empty = grow_cells_from_nuclei(image, np.zeros_like(nuclei), logits, SeededCellSettings())
    assert empty.shape == (64, 64) and not empty.any()
    with pytest.raises(ValueError, match=r"flow divergence \(32, 32\) must match the field's \(64, 64\)"):
        grow_cells_from_nuclei(image, nuclei, logits, SeededCellSettings(),
                               flow_divergence=np.zeros((32, 32), np.float32))
    with pytest.raises(ValueError, match=r"SeededCellSettings.probability_weight must be >= 0, got -1"):
        SeededCellSettings(probability_weight=-1)
    with pytest.raises(ValueError, match="cell_assembly must be one of nuclei, flows, got 'watershed'"):
        CellposeSettings(cell_assembly="watershed")


def test_median_nucleus_diameter() -> None:
    _, nuclei, _ = two_cell_field()
    area = int((nuclei == 1).sum())
    assert median_nucleus_diameter(nuclei) == pytest.approx(2 * np.sqrt(area / np.pi))
    with pytest.raises(ValueError, match="the nucleus mask has no nuclei"):
        median_nucleus_diameter(np.zeros((8, 8), np.int32))


def test_cell_evidence_divergence_peaks_on_the_borders_between_flow_basins(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Four basins on a 48 x 64 network output (flows are dY, dX as in Cellpose): dY points to y = 12 above row 24
    and to y = 36 below it, dX to x = 16 left of column 32 and to x = 48 right of it. The divergence, resized to the
    2 x 96 x 128 input, peaks on row 48 and column 64 (the borders) and is negative at the centres."""
    runner = CellposeNetRunner(CellposeNetSpec("t", Path("t"), "safetensors", (2, 8, 16, 32, 32), 30.0, ""), 30.0,
                               net=object())  # type: ignore[arg-type]  # network_outputs is replaced below
    yy, xx = np.mgrid[:48, :64].astype(np.float32)
    flow_y = np.where(yy < 24, np.sign(12 - yy), np.sign(36 - yy))
    flow_x = np.where(xx < 32, np.sign(16 - xx), np.sign(48 - xx))
    flows = np.stack([flow_y, flow_x]).astype(np.float32)
    prob = np.where(xx < 32, 2.0, -1.0).astype(np.float32)
    monkeypatch.setattr(runner, "network_outputs", lambda inputs: [(flows, prob)] * len(inputs))
    (logits, divergence), = runner.cell_evidence([np.zeros((2, 96, 128), np.float32)])
    assert logits.shape == divergence.shape == (96, 128)  # back at the input's H, W
    assert logits[:, :60].min() == pytest.approx(2.0) and logits[:, 68:].max() == pytest.approx(-1.0)
    assert 60 <= int(np.argmax(divergence.mean(axis=0))) <= 67  # the x border (32 at network scale)
    assert 44 <= int(np.argmax(divergence.mean(axis=1))) <= 51  # the y border (24 at network scale)
    assert divergence[24, 32] < 0 and divergence[72, 96] < 0  # sinks at the basin centres
    # scaled by its 99th percentile: 1 on a border (2 where the two borders cross)
    np.testing.assert_allclose(divergence[10, 63:65], 1.0, atol=1e-5)
    np.testing.assert_allclose(divergence[47:49, 10], 1.0, atol=1e-5)


@pytest.fixture(scope="module")
def bundled_segmenter() -> CellposeSegmenter:
    return CellposeSegmenter(CellposeSettings(cell_assembly="nuclei"))


def test_bundled_models_give_one_nucleus_per_cell_on_a_synthetic_field(bundled_segmenter: CellposeSegmenter) -> None:
    from hpa_cells.synthetic.dataset import SyntheticConfig, SyntheticGenerator

    sample = SyntheticGenerator(SyntheticConfig(seed=4242, size=512)).generate(0)
    result = bundled_segmenter.segment_batch([sample.image])[0]
    assert result.n_cells >= 0.8 * sample.cell_mask.max()
    ids = np.unique(result.cells)[1:]
    np.testing.assert_array_equal(np.unique(result.nuclei)[1:], ids)  # every cell has its nucleus, same id
    assert (result.qc.n_nuclei == 1).all()  # so no cell is flagged no_nucleus or multi_nuclei
    ap = average_precision([sample.cell_mask.astype(np.int32)], [result.cells], thresholds=(0.5,))[0]
    assert ap[0, 0] >= 0.75


@pytest.mark.real
def test_bundled_models_match_the_real_reference_masks(real_data: Path, bundled_segmenter: CellposeSegmenter) -> None:
    """The five real fields (the bundled cell model was fine-tuned on them, so this guards against regressions;
    held-out scores are in BENCHMARKS.md): measured 0.918 mean AP@0.5 with nuclei, 0.731 with flows in one pass."""
    from segmentation.training_data import real_reference_fields

    fields = real_reference_fields(real_data, 512, "cells")
    results = bundled_segmenter.segment_batch([f.image for f in fields])
    ap = average_precision([f.mask for f in fields], [r.cells for r in results], thresholds=(0.5,))[0]
    assert len(fields) == 5 and float(ap[:, 0].mean()) >= 0.85 and float(ap[:, 0].min()) >= 0.6
