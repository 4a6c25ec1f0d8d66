"""Watershed baseline on synthetic fields with known cells, input checks, and AP on the real HPA fields."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from hpa_cells.instance_metrics import average_precision
from segmentation.preprocessing import FieldImageError
from segmentation.quality_control import QCFlag
from segmentation.result import Segmenter
from segmentation.watershed import WatershedConfig, WatershedSegmenter

# Synthetic scene at 512 px: (row, col) centres of cells with a nucleus; the pair at (300, 300) and
# (300, 342) touches (cells and nearly the nuclei), the last cell is cut by the right border.
CELL_CENTRES = [(100, 100), (100, 300), (300, 100), (300, 300), (300, 342), (420, 400), (250, 495)]
CELL_RADIUS, NUCLEUS_RADIUS = 48, 20
ORPHAN_CYTOPLASM = (450, 100)  # cytoplasm with no nucleus: must stay background
SPECK = (40, 450)  # a 2 px blue speck: not a nucleus


def synthetic_field(size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A `4,size,size` uint8 field and its `H,W` true cell mask (cells split by nearest centre).

    Geometry is defined at 512 px and scaled to `size`, as an HPA field shrunk further would be.
    """
    rng = np.random.default_rng(seed)
    s = size / 512
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    centres = np.array(CELL_CENTRES, np.float32) * s
    dist = np.sqrt((yy[None] - centres[:, 0, None, None]) ** 2 + (xx[None] - centres[:, 1, None, None]) ** 2)
    nearest = dist.argmin(axis=0)
    in_cell = dist.min(axis=0) <= CELL_RADIUS * s
    truth = np.where(in_cell, nearest + 1, 0).astype(np.int32)
    nucleus = dist.min(axis=0) <= NUCLEUS_RADIUS * s
    orphan = np.hypot(yy - ORPHAN_CYTOPLASM[0] * s, xx - ORPHAN_CYTOPLASM[1] * s) <= 40 * s
    speck = np.hypot(yy - SPECK[0] * s, xx - SPECK[1] * s) <= 2 * s

    def channel(level_by_mask: list[tuple[np.ndarray, float]]) -> np.ndarray:
        values = np.full((size, size), 4.0, np.float32)
        for mask, level in level_by_mask:
            values[mask] = level
        values += rng.normal(0.0, 8.0, values.shape)
        return np.clip(values, 0, 255).astype(np.uint8)

    cytoplasm = in_cell | orphan
    image = np.stack(
        [
            channel([(cytoplasm, 110.0)]),  # microtubules
            channel([(in_cell, 60.0)]),  # protein (unused by the segmenter)
            channel([(nucleus, 190.0), (speck, 190.0)]),  # nucleus
            channel([(cytoplasm, 90.0)]),  # ER
        ]
    )
    return image, truth


def test_finds_every_synthetic_cell_with_its_own_nucleus() -> None:
    image, truth = synthetic_field(512, seed=7)
    (result,) = WatershedSegmenter().segment_batch([image])
    assert result.cells.shape == (512, 512) and result.cells.dtype == np.int32
    assert result.n_cells == len(CELL_CENTRES)
    assert result.qc.n_nuclei.tolist() == [1] * len(CELL_CENTRES)  # touching nuclei were split
    ap, tp, _, _ = average_precision([truth], [result.cells], thresholds=(0.5, 0.75))
    assert tp[0].tolist() == [len(CELL_CENTRES)] * 2
    assert ap[0, 1] == 1.0
    # The orphan cytoplasm and the speck produce no cell.
    assert result.cells[ORPHAN_CYTOPLASM] == 0
    assert result.nuclei[SPECK] == 0
    # Only the cell cut by the right border is flagged.
    border_cell = result.cells[CELL_CENTRES[-1]]
    flagged = result.qc.cell_id[result.qc.flags != 0].tolist()
    assert flagged == [border_cell]
    assert result.qc.flags_of(int(border_cell)) == QCFlag.BORDER


def test_lengths_scale_with_the_image_size() -> None:
    image, truth = synthetic_field(256, seed=3)
    (result,) = WatershedSegmenter().segment_batch([image])
    assert result.n_cells == len(CELL_CENTRES)
    _, tp, _, _ = average_precision([truth], [result.cells], thresholds=(0.5,))
    assert tp[0, 0] == len(CELL_CENTRES)


def test_each_nucleus_lies_in_the_cell_grown_from_it() -> None:
    image, _ = synthetic_field(512, seed=11)
    cells, nuclei = WatershedSegmenter().segment_masks(image)
    assert np.array_equal(np.unique(cells), np.unique(nuclei))
    inside = nuclei > 0
    np.testing.assert_array_equal(cells[inside], nuclei[inside])


def test_blank_field_gives_no_cells() -> None:
    (result,) = WatershedSegmenter().segment_batch([np.zeros((4, 128, 160), np.uint8)])
    assert result.cells.shape == (128, 160)
    assert result.n_cells == 0 and result.nuclei.max() == 0


def test_batch_keeps_order_and_accepts_uint16() -> None:
    first, _ = synthetic_field(256, seed=1)
    second = np.zeros((4, 96, 96), np.uint16)
    results = WatershedSegmenter().segment_batch([first, second])
    assert [r.n_cells for r in results] == [len(CELL_CENTRES), 0]
    assert results[1].cells.shape == (96, 96)


def test_bad_inputs_raise_errors_naming_the_image() -> None:
    good, _ = synthetic_field(128, seed=0)
    segmenter = WatershedSegmenter()
    with pytest.raises(
        FieldImageError, match=r"image 1 of the batch: expected shape 4,H,W .* got \(3, 128, 128\)"
    ):
        segmenter.segment_batch([good, good[:3]])
    with pytest.raises(
        FieldImageError, match="image 0 of the batch: expected dtype uint8 or uint16, got float32"
    ):
        segmenter.segment_batch([good.astype(np.float32)])


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="WatershedConfig.nucleus_diameter_px must be > 0, got -3"):
        WatershedConfig(nucleus_diameter_px=-3)
    with pytest.raises(ValueError, match="WatershedConfig.cell_threshold_method must be one of"):
        WatershedConfig(cell_threshold_method="mean")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"nucleus_threshold_floor must be in \[0, 1\), got 1.0"):
        WatershedConfig(nucleus_threshold_floor=1.0)


def test_is_a_segmenter_with_json_provenance() -> None:
    segmenter = WatershedSegmenter(WatershedConfig(cell_threshold_method="otsu"))
    assert isinstance(segmenter, Segmenter)
    assert segmenter.name == "watershed"
    record = json.loads(json.dumps(segmenter.provenance()))
    assert record["segmenter"] == "watershed"
    assert record["config"]["cell_threshold_method"] == "otsu"
    assert record["config"]["nucleus_diameter_px"] == 45.0
    assert "BORDER" in record["qc"]["checks"]


# AP@0.5 measured at 512 px with the default settings (numbers on the right), floors 0.05 below.
REAL_FIELD_AP50_FLOOR = {
    "000a6c98-bb9b-11e8-b2b9-ac1f6b6435d0": 0.95,  # measured 1.000
    "a34d8680-bb99-11e8-b2b9-ac1f6b6435d0": 0.70,  # measured 0.750
    "a7faf0b4-bb99-11e8-b2b9-ac1f6b6435d0": 0.95,  # measured 1.000 (a 3072 px field)
    "b6a469d8-bbad-11e8-b2ba-ac1f6b6435d0": 0.85,  # measured 0.900
    "f0ac7116-bb99-11e8-b2b9-ac1f6b6435d0": 0.74,  # measured 0.796
}
WORKING_SIZE = 512


def _load_real_field(folder: Path, field_id: str) -> tuple[np.ndarray, np.ndarray]:
    """`4,512,512` uint8 field (INTER_AREA) and its `512,512` reference cell mask (nearest)."""
    channels = []
    for colour in ("red", "green", "blue", "yellow"):
        path = folder / "images" / f"{field_id}_{colour}.png"
        channel = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if channel is None:
            raise FileNotFoundError(f"cannot read {path}")
        channels.append(cv2.resize(channel, (WORKING_SIZE, WORKING_SIZE), interpolation=cv2.INTER_AREA))
    mask_path = folder / "masks" / f"{field_id}_predictedmask.png"
    mask = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise FileNotFoundError(f"cannot read {mask_path}")
    mask = cv2.resize(mask, (WORKING_SIZE, WORKING_SIZE), interpolation=cv2.INTER_NEAREST)
    return np.stack(channels), mask.astype(np.int32)


@pytest.mark.real
def test_ap_on_real_fields_against_hpa_reference_masks(real_data: Path) -> None:
    folder = real_data / "hpa2021_subset"
    fields = [_load_real_field(folder, field_id) for field_id in REAL_FIELD_AP50_FLOOR]
    results = WatershedSegmenter().segment_batch([image for image, _ in fields])
    ap, _, _, _ = average_precision(
        [mask for _, mask in fields], [r.cells for r in results], thresholds=(0.5, 0.75)
    )
    for (field_id, floor), field_ap in zip(REAL_FIELD_AP50_FLOOR.items(), ap, strict=True):
        assert field_ap[0] >= floor, f"{field_id}: AP@0.5 {field_ap[0]:.3f} fell below {floor}"
    assert ap[:, 1].mean() >= 0.61, f"mean AP@0.75 {ap[:, 1].mean():.3f} fell below 0.61 (measured 0.660)"
