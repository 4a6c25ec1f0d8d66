"""Per-cell crops: geometry, ordering, measurements, other-cell zeroing, scaling and input checks."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from hpa_cells.crops import CELL_RECORD_COLUMNS, CropConfig, CropInputError, extract_cell_crops

H = W = 160


def _field() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 4,H,W image whose pixel values encode their position, two touching cells with ids 7 and 3
    (given out of order), and nuclei labelled with their own ids (not the cells')."""
    yy, xx = np.mgrid[:H, :W]
    image_chw = np.stack([(yy % 251) + 1, (xx % 251) + 1, ((yy + xx) % 200) + 20, np.full((H, W), 9)]).astype(
        np.uint8
    )
    cells_hw = np.zeros((H, W), dtype=np.int32)
    cells_hw[20:50, 30:70] = 7  # 30 x 40 box
    cells_hw[50:60, 40:60] = 3  # touches cell 7 from below
    nuclei_hw = np.zeros((H, W), dtype=np.int32)
    nuclei_hw[30:40, 40:50] = 101  # 100 px inside cell 7
    nuclei_hw[55:60, 40:44] = 102  # 20 px inside cell 3
    nuclei_hw[100:105, 100:105] = 103  # a nucleus without a cell
    return image_chw, cells_hw, nuclei_hw


def test_crops_are_in_cell_id_order_with_exact_measurements() -> None:
    image_chw, cells_hw, nuclei_hw = _field()
    result = extract_cell_crops(image_chw, cells_hw, nuclei_hw, config=CropConfig(crop_size=64, upscale=False))
    assert result.crops.shape == (2, 4, 64, 64) and result.crops.dtype == np.uint8
    assert result.masks.shape == (2, 64, 64) and result.masks.dtype == np.uint8
    table = result.table
    assert list(table.columns) == list(CELL_RECORD_COLUMNS)
    assert table["cell_id"].tolist() == [3, 7]
    assert table[["bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1"]].to_numpy().tolist() == [
        [50, 40, 60, 60],
        [20, 30, 50, 70],
    ]
    assert table["area"].tolist() == [200, 1200]
    assert table["nucleus_area"].tolist() == [20, 100]
    np.testing.assert_allclose(table[["centroid_y", "centroid_x"]].to_numpy(), [[54.5, 49.5], [34.5, 49.5]])
    assert table["scale"].tolist() == [1.0, 1.0]
    assert table["qc_flags"].tolist() == [0, 0]


def test_unscaled_crop_is_centred_and_keeps_own_pixels_exactly() -> None:
    image_chw, cells_hw, nuclei_hw = _field()
    size = 64
    result = extract_cell_crops(image_chw, cells_hw, nuclei_hw, config=CropConfig(crop_size=size, upscale=False))
    mask = result.masks[1]  # cell 7, bbox 20:50, 30:70
    assert int(mask.sum()) == 1200
    rows, cols = np.nonzero(mask)
    assert (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1) == (17, 47, 12, 52)
    assert (
        abs((rows.min() + rows.max() + 1) / 2 - size / 2) <= 1
        and abs((cols.min() + cols.max() + 1) / 2 - size / 2) <= 1
    )
    # Own pixels are copied unchanged: crop (u, v) = image (u + 3, v + 18) for this cell.
    np.testing.assert_array_equal(result.crops[1][:, 17:47, 12:52], image_chw[:, 20:50, 30:70])
    # The documented inverse mapping lands on the same pixel to within one crop pixel.
    cy, cx = (20 + 50) / 2, (30 + 70) / 2
    u, v = 17, 12
    assert abs(cy + (u + 0.5 - size / 2) - 0.5 - 20) <= 1 and abs(cx + (v + 0.5 - size / 2) - 0.5 - 30) <= 1


def test_other_cells_are_zeroed_but_background_kept() -> None:
    image_chw, cells_hw, nuclei_hw = _field()
    zeroed = extract_cell_crops(image_chw, cells_hw, nuclei_hw, config=CropConfig(crop_size=64, upscale=False)).crops[1]
    kept = extract_cell_crops(
        image_chw, cells_hw, nuclei_hw, config=CropConfig(crop_size=64, zero_other_cells=False, upscale=False)
    ).crops[1]
    # Cell 3 (image rows 50:60, cols 40:60) shows in cell 7's crop at rows 47:51 (its padded box ends
    # at image row 54), cols 22:42.
    assert not zeroed[:, 47:51, 22:42].any()
    np.testing.assert_array_equal(kept[:, 47:51, 22:42], image_chw[:, 50:54, 40:60])
    # Background just above cell 7 (image row 18) is kept in both.
    np.testing.assert_array_equal(zeroed[:, 15, 12:52], image_chw[:, 18, 30:70])


def test_large_cell_is_shrunk_keeping_aspect_and_small_cell_optionally_upscaled() -> None:
    image_chw = np.full((4, 300, 300), 50, dtype=np.uint8)
    cells_hw = np.zeros((300, 300), dtype=np.uint16)
    cells_hw[10:210, 20:120] = 1  # 200 x 100
    cells_hw[250:260, 250:270] = 2  # 10 x 20
    nuclei_hw = np.zeros_like(cells_hw)
    result = extract_cell_crops(
        image_chw, cells_hw, nuclei_hw, config=CropConfig(crop_size=64, margin_fraction=0.1, upscale=False)
    )
    # Cell 1: padded box 240 x 140 -> scale 64/240, mask about 53 x 27 (ratio 2 kept).
    assert result.table["scale"].iloc[0] == pytest.approx(64 / 240)
    rows, cols = np.nonzero(result.masks[0])
    assert rows.max() + 1 - rows.min() == pytest.approx(200 * 64 / 240, abs=1.5)
    assert cols.max() + 1 - cols.min() == pytest.approx(100 * 64 / 240, abs=1.5)
    # Cell 2 stays at native size without upscale, fills the crop width with upscale (the default).
    assert result.table["scale"].iloc[1] == 1.0 and int(result.masks[1].sum()) == 200
    upscaled = extract_cell_crops(
        image_chw, cells_hw, nuclei_hw, config=CropConfig(crop_size=64)  # the default fills the crop
    )
    assert upscaled.table["scale"].iloc[1] == pytest.approx(64 / 24)  # padded box 14 x 24
    rows, cols = np.nonzero(upscaled.masks[1])
    assert cols.max() + 1 - cols.min() == pytest.approx(20 * 64 / 24, abs=1.5)
    assert set(np.unique(upscaled.masks)) == {0, 1}


def test_cell_at_field_border_is_zero_padded() -> None:
    image_chw = np.full((4, 40, 40), 200, dtype=np.uint8)
    cells_hw = np.zeros((40, 40), dtype=np.int32)
    cells_hw[0:10, 0:10] = 5
    result = extract_cell_crops(image_chw, cells_hw, np.zeros_like(cells_hw), config=CropConfig(crop_size=32, upscale=False))
    crop = result.crops[0]
    rows, cols = np.nonzero(result.masks[0])
    # Padded box -1:11 -> 12 px, placed at 10:22; its first row/col lies outside the field.
    assert (rows.min(), cols.min()) == (11, 11)
    assert not crop[:, 10, :].any() and not crop[:, :, 10].any()
    assert (crop[:, 11:22, 11:22] == 200).all()


def test_qc_flags_from_array_or_mapping() -> None:
    image_chw, cells_hw, nuclei_hw = _field()
    by_array = np.zeros(8, dtype=np.uint16)
    by_array[3], by_array[7] = 1, 6
    assert extract_cell_crops(image_chw, cells_hw, nuclei_hw, qc_flags=by_array).table[
        "qc_flags"
    ].tolist() == [1, 6]
    assert extract_cell_crops(image_chw, cells_hw, nuclei_hw, qc_flags={3: 2, 7: 0}).table[
        "qc_flags"
    ].tolist() == [2, 0]
    with pytest.raises(CropInputError, match=r"qc_flags mapping has no entry for cell ids \[7\]"):
        extract_cell_crops(image_chw, cells_hw, nuclei_hw, qc_flags={3: 2})
    with pytest.raises(CropInputError, match="qc_flags array has 5 entries but cell id 7 needs an entry"):
        extract_cell_crops(image_chw, cells_hw, nuclei_hw, qc_flags=np.zeros(5, dtype=np.uint8))


def test_field_without_cells_gives_empty_arrays() -> None:
    image_chw = np.zeros((4, 32, 32), dtype=np.uint8)
    empty = np.zeros((32, 32), dtype=np.int32)
    result = extract_cell_crops(image_chw, empty, empty, config=CropConfig(crop_size=16))
    assert (
        result.crops.shape == (0, 4, 16, 16) and result.masks.shape == (0, 16, 16) and len(result.table) == 0
    )


@pytest.mark.parametrize(
    ("image_shape", "image_dtype", "mask_shape", "message"),
    [
        ((3, 32, 32), np.uint8, (32, 32), r"image_chw must be 4,H,W; got shape \(3, 32, 32\)"),
        ((4, 32, 32), np.float32, (32, 32), "image_chw must be uint8"),
        (
            (4, 32, 32),
            np.uint8,
            (32, 31),
            r"cells_hw must be H,W = \(32, 32\) like the image; got \(32, 31\)",
        ),
    ],
)
def test_bad_inputs_are_rejected(
    image_shape: tuple[int, ...], image_dtype: type, mask_shape: tuple[int, int], message: str
) -> None:
    with pytest.raises(CropInputError, match=message):
        extract_cell_crops(
            np.zeros(image_shape, dtype=image_dtype),
            np.zeros(mask_shape, np.int32),
            np.zeros((32, 32), np.int32),
        )


def test_float_label_mask_is_rejected() -> None:
    with pytest.raises(CropInputError, match="nuclei_hw must be an integer label mask; got dtype float64"):
        extract_cell_crops(np.zeros((4, 8, 8), np.uint8), np.zeros((8, 8), np.int32), np.zeros((8, 8)))


@pytest.mark.real
def test_real_fields_give_one_whole_cell_per_label(real_data: Path) -> None:
    """Cut the 2021 fields (shrunk to 512 px) with HPA's own cell masks: every label becomes one crop
    whose mask area matches the cell area times scale squared, and which fills the crop."""
    folder = real_data / "hpa2021_subset"
    mask_paths = sorted((folder / "masks").glob("*_predictedmask.png"))
    assert mask_paths, f"no masks under {folder / 'masks'}"
    for mask_path in mask_paths[:2]:
        image_id = mask_path.name.split("_")[0]
        channels = [
            cv2.resize(
                cv2.imread(str(folder / "images" / f"{image_id}_{c}.png"), cv2.IMREAD_UNCHANGED),
                (512, 512),
                interpolation=cv2.INTER_AREA,
            )
            for c in ("red", "green", "blue", "yellow")
        ]
        cells_hw = cv2.resize(
            cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED), (512, 512), interpolation=cv2.INTER_NEAREST
        )
        result = extract_cell_crops(np.stack(channels), cells_hw, np.zeros_like(cells_hw))
        expected_ids = [int(i) for i in np.unique(cells_hw) if i != 0]
        assert result.table["cell_id"].tolist() == expected_ids
        mask_areas = result.masks.reshape(len(result), -1).sum(axis=1)
        expected_areas = result.table["area"].to_numpy() * result.table["scale"].to_numpy() ** 2
        np.testing.assert_allclose(mask_areas, expected_areas, rtol=0.15)
        assert (result.crops.reshape(len(result), -1).max(axis=1) > 0).all()
        for mask in result.masks:  # by default each cell fills the crop: its longer side spans S / (1 + 2 margin)
            rows, cols = np.nonzero(mask)
            longer = max(rows.max() + 1 - rows.min(), cols.max() + 1 - cols.min())
            assert longer >= 128 / 1.2 - 3
