"""Tests for hpa_cells.images: reading/writing 4-channel HPA samples, scaling, greyscale, resizing, scanning."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image

from hpa_cells.images import (
    CHANNELS,
    IMAGE_EXTENSIONS,
    ChannelShapeError,
    DuplicateChannelError,
    LabelMaskError,
    LabelMaskReadError,
    MissingChannelError,
    NotGreyscaleError,
    UnreadableImageError,
    auto_working_size,
    find_sample_files,
    parse_channel_filename,
    read_greyscale,
    read_label_mask,
    read_sample,
    read_sample_files,
    resize_image,
    resize_mask,
    scale_intensity,
    scan_folder,
    to_greyscale,
    working_shape,
    write_label_mask,
    write_sample,
)


def random_sample(seed: int, shape: tuple[int, int] = (24, 32), dtype: type = np.uint8) -> np.ndarray:
    """A 4,H,W sample of random values spanning the dtype's range (no channel all zero)."""
    rng = np.random.default_rng(seed)
    top = np.iinfo(dtype).max
    sample_chw = rng.integers(0, top, size=(4, *shape), dtype=dtype, endpoint=True)
    sample_chw[:, 0, 0] = top
    return sample_chw


def decode_with_pil(path: Path) -> np.ndarray:
    """An independent decoder to compare against."""
    with Image.open(path) as image:
        return np.asarray(image)


# ----------------------------------------------------------------------------------------------
# constants and file names
# ----------------------------------------------------------------------------------------------


def test_channel_order_and_extensions() -> None:
    assert CHANNELS == ("red", "green", "blue", "yellow")
    assert IMAGE_EXTENSIONS == (".png", ".jpg", ".jpeg", ".tif", ".tiff")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("abc_red.png", ("abc", "red")),
        (
            "837e738c-bba8-11e8-b2ba-ac1f6b6435d0_yellow.PNG",
            ("837e738c-bba8-11e8-b2ba-ac1f6b6435d0", "yellow"),
        ),
        ("plate_1_well-A1_blue.TiFf", ("plate_1_well-A1", "blue")),
        ("x.y_green.jpeg", ("x.y", "green")),
        ("abc_purple.png", None),
        ("abc_Red.png", None),
        ("_red.png", None),
        ("red.png", None),
        ("abc_red.txt", None),
        ("abc_red", None),
        ("._abc_red.png", None),
        ("1234_A1_1_red.jpg", ("1234_A1_1", "red")),  # HPA website download: {plate}_{well}_{field}_{colour}
        ("1234_A1_1_blue_red_green.jpg", None),  # the website's composite, not a channel
    ],
)
def test_parse_channel_filename_splits_on_last_underscore(
    name: str, expected: tuple[str, str] | None
) -> None:
    assert parse_channel_filename(name) == expected


# ----------------------------------------------------------------------------------------------
# write / read round trips
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", ["png", "tif", ".TIFF"])
def test_uint8_round_trip(tmp_path: Path, ext: str) -> None:
    sample_chw = random_sample(0)
    paths = write_sample(tmp_path / "new" / "folder", "id_with_under-scores", sample_chw, ext=ext)
    suffix = "." + ext.lower().lstrip(".")
    assert list(paths) == list(CHANNELS)
    assert [p.name for p in paths.values()] == [f"id_with_under-scores_{c}{suffix}" for c in CHANNELS]
    out = read_sample(tmp_path / "new" / "folder", "id_with_under-scores")
    assert out.dtype == np.uint8 and out.shape == (4, 24, 32)
    np.testing.assert_array_equal(out, sample_chw)


@pytest.mark.parametrize("ext", ["png", "tiff"])
def test_uint16_round_trip_and_full_range_scaling(tmp_path: Path, ext: str) -> None:
    sample_chw = random_sample(1, dtype=np.uint16)
    paths = write_sample(tmp_path, "s16", sample_chw, ext=ext)
    for index, channel in enumerate(CHANNELS):
        stored = read_greyscale(paths[channel])
        assert stored.dtype == np.uint16
        np.testing.assert_array_equal(stored, sample_chw[index])
    as_uint8 = read_sample(tmp_path, "s16")
    np.testing.assert_array_equal(as_uint8, np.round(sample_chw / 257.0).astype(np.uint8))
    as_float = read_sample(tmp_path, "s16", dtype="float32")
    assert as_float.dtype == np.float32
    np.testing.assert_allclose(as_float, sample_chw / 65535.0, rtol=0, atol=1e-7)
    assert as_float.max() == 1.0


def test_jpeg_write_is_8_bit_only_and_reads_back_close(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=re.escape("sample j: JPEG holds 8-bit data only, got uint16")):
        write_sample(tmp_path, "j", random_sample(2, dtype=np.uint16), ext="jpg")
    smooth_chw = np.broadcast_to(np.linspace(0, 255, 32, dtype=np.uint8), (4, 24, 32)).copy()
    write_sample(tmp_path, "j", smooth_chw, ext="jpg")
    out = read_sample(tmp_path, "j")
    assert out.shape == (4, 24, 32)
    assert np.abs(out.astype(int) - smooth_chw).max() <= 8  # lossy, but close


@pytest.mark.parametrize(
    ("image", "ext", "message"),
    [
        (
            np.zeros((3, 8, 8), np.uint8),
            "png",
            "sample s: expected a 4,H,W array (red, green, blue, yellow), got shape (3, 8, 8)",
        ),
        (np.zeros((4, 8, 8), np.float32), "png", "sample s: expected dtype uint8 or uint16, got float32"),
        (
            np.zeros((4, 8, 8), np.uint8),
            "bmp",
            "unsupported image extension 'bmp'; use one of .png, .jpg, .jpeg, .tif, .tiff",
        ),
    ],
)
def test_write_sample_rejects_bad_input(tmp_path: Path, image: np.ndarray, ext: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        write_sample(tmp_path, "s", image, ext=ext)
    assert list(tmp_path.iterdir()) == []


def test_label_mask_round_trip_keeps_16_bit_ids(tmp_path: Path) -> None:
    mask_hw = np.zeros((20, 30), dtype=np.int64)
    mask_hw[2:6, 3:9] = 1
    mask_hw[10:15, 10:20] = 300
    mask_hw[16:19, 25:29] = 65535
    path = tmp_path / "masks" / "m.png"
    write_label_mask(path, mask_hw)
    back = read_label_mask(path)
    assert back.dtype == np.uint16 and back.shape == (20, 30)
    np.testing.assert_array_equal(back, mask_hw)
    assert decode_with_pil(path).dtype == np.uint16  # really a 16-bit PNG, readable by other tools


@pytest.mark.parametrize(
    ("mask", "name", "message"),
    [
        (
            np.full((4, 4), 65536, np.int32),
            "m.png",
            "label id 65536 exceeds 65535, the largest a 16-bit PNG can hold",
        ),
        (np.full((4, 4), -1, np.int32), "m.png", "label ids must be >= 0, found -1"),
        (np.zeros((4, 4), np.float32), "m.png", "a label mask must hold integer ids, got dtype float32"),
        (np.zeros((1, 4, 4), np.uint16), "m.png", "a label mask must be H,W, got shape (1, 4, 4)"),
        (np.zeros((4, 4), np.uint16), "m.tif", "label masks are written as PNG; give a path ending in .png"),
    ],
)
def test_write_label_mask_rejects(tmp_path: Path, mask: np.ndarray, name: str, message: str) -> None:
    with pytest.raises(LabelMaskError, match="^" + re.escape(f"{tmp_path / name}: {message}") + "$"):
        write_label_mask(tmp_path / name, mask)
    assert not (tmp_path / name).exists()


def test_read_label_mask_8_bit_and_32_bit_and_colour(tmp_path: Path) -> None:
    mask8 = np.zeros((10, 12), np.uint8)
    mask8[1:4, 1:4], mask8[5:9, 6:11] = 1, 2
    cv2.imwrite(str(tmp_path / "m8.png"), mask8)
    back8 = read_label_mask(tmp_path / "m8.png")
    assert back8.dtype == np.uint16
    np.testing.assert_array_equal(back8, mask8)

    mask32 = mask8.astype(np.uint32) * 100_000
    tifffile.imwrite(tmp_path / "m32.tif", mask32)
    back32 = read_label_mask(tmp_path / "m32.tif")
    assert back32.dtype == np.int32
    np.testing.assert_array_equal(back32, mask32)

    grey_rgb = np.repeat(mask8[:, :, None], 3, axis=2)
    cv2.imwrite(str(tmp_path / "grey_rgb.png"), grey_rgb)
    np.testing.assert_array_equal(read_label_mask(tmp_path / "grey_rgb.png"), mask8)

    colour = grey_rgb.copy()
    colour[0, 0, 1] = 7
    cv2.imwrite(str(tmp_path / "colour.png"), colour)
    expected = f"{tmp_path / 'colour.png'} is not a label mask: shape (10, 12, 3), dtype uint8 (colour channels differ)"
    with pytest.raises(LabelMaskReadError, match=re.escape(expected)):
        read_label_mask(tmp_path / "colour.png")

    tifffile.imwrite(tmp_path / "float.tif", np.zeros((4, 4), np.float32))
    with pytest.raises(
        LabelMaskReadError,
        match=re.escape(f"{tmp_path / 'float.tif'} is not a label mask: shape (4, 4), dtype float32"),
    ):
        read_label_mask(tmp_path / "float.tif")


# ----------------------------------------------------------------------------------------------
# intensity scaling
# ----------------------------------------------------------------------------------------------


def test_full_range_16_bit_values() -> None:
    plane = np.array([[0, 128, 129, 257, 385, 386, 65535]], dtype=np.uint16)
    np.testing.assert_array_equal(scale_intensity(plane), [[0, 0, 1, 1, 1, 2, 255]])
    every_value = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    np.testing.assert_array_equal(scale_intensity(every_value), np.round(every_value / 257.0))
    as_float = scale_intensity(plane, dtype="float32")
    assert as_float.dtype == np.float32
    np.testing.assert_allclose(as_float, plane / 65535.0, atol=1e-7)


def test_8_bit_full_range_is_passed_through_without_copy() -> None:
    plane = np.arange(256, dtype=np.uint8).reshape(16, 16)
    out = scale_intensity(plane)
    assert out is plane
    np.testing.assert_allclose(scale_intensity(plane, dtype="float32"), plane / 255.0, atol=1e-7)


def test_per_image_max_stretches_dim_12_bit_data() -> None:
    plane = np.array([[0, 1000, 2048, 4095]], dtype=np.uint16)
    np.testing.assert_array_equal(scale_intensity(plane, "per_image_max"), [[0, 62, 128, 255]])
    np.testing.assert_allclose(scale_intensity(plane, "per_image_max", "float32"), plane / 4095.0, atol=1e-7)
    np.testing.assert_array_equal(scale_intensity(plane), [[0, 4, 8, 16]])  # full range leaves it dim
    np.testing.assert_array_equal(scale_intensity(plane, "per_image_max", peak=8190), [[0, 31, 64, 128]])
    zeros = np.zeros((3, 3), np.uint16)
    np.testing.assert_array_equal(scale_intensity(zeros, "per_image_max"), zeros)


def test_float_input_scaling() -> None:
    plane = np.array([[0.0, 0.25, 0.5, 1.0]], dtype=np.float64)
    np.testing.assert_array_equal(scale_intensity(plane), [[0, 64, 128, 255]])
    np.testing.assert_array_equal(scale_intensity(plane * 0.5, "per_image_max"), [[0, 64, 128, 255]])
    out = scale_intensity(plane, dtype="float32")
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, plane.astype(np.float32))


def test_per_image_max_sample_from_files(tmp_path: Path) -> None:
    dim_chw = np.zeros((4, 8, 8), np.uint16)
    dim_chw[:, 0, 0] = [4095, 2000, 100, 1]
    dim_chw[:, 1, 1] = [2048, 1000, 50, 0]
    write_sample(tmp_path, "dim", dim_chw)
    out = read_sample(tmp_path, "dim", scaling="per_image_max")
    np.testing.assert_array_equal(out[:, 0, 0], [255, 255, 255, 255])
    np.testing.assert_array_equal(out[:, 1, 1], [128, 128, 128, 0])


def test_invalid_options_raise(tmp_path: Path) -> None:
    write_sample(tmp_path, "s", random_sample(3))
    with pytest.raises(
        ValueError, match=re.escape("scaling must be one of ('full_range', 'per_image_max'), got 'auto'")
    ):
        read_sample(tmp_path, "s", scaling="auto")  # type: ignore[arg-type]
    with pytest.raises(
        ValueError, match=re.escape("dtype must be one of ('uint8', 'float32'), got 'uint16'")
    ):
        read_sample(tmp_path, "s", dtype="uint16")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------
# greyscale conversion
# ----------------------------------------------------------------------------------------------


def test_equal_colour_channels_give_that_channel() -> None:
    grey = np.random.default_rng(4).integers(0, 256, (6, 7), dtype=np.uint8)
    np.testing.assert_array_equal(to_greyscale(np.stack([grey] * 3, axis=2)), grey)
    rgba = np.dstack([grey, grey, grey, np.full_like(grey, 255)])
    np.testing.assert_array_equal(to_greyscale(rgba), grey)
    np.testing.assert_array_equal(to_greyscale(grey[None]), grey)
    np.testing.assert_array_equal(to_greyscale(grey[:, :, None]), grey)


def test_colour_coded_channels_give_per_pixel_max_and_ignore_alpha(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    bgr = rng.integers(0, 200, (6, 7, 3), dtype=np.uint8)
    alpha = np.full((6, 7), 255, np.uint8)
    expected = bgr.max(axis=2)
    np.testing.assert_array_equal(to_greyscale(np.dstack([bgr, alpha])), expected)
    # a yellow channel coded as red + green, as in HPAv18 colour JPEGs (lossless here)
    signal = rng.integers(0, 256, (6, 7), dtype=np.uint8)
    yellow_bgr = np.dstack([np.zeros_like(signal), signal, signal])
    cv2.imwrite(str(tmp_path / "y_yellow.png"), yellow_bgr)
    np.testing.assert_array_equal(read_greyscale(tmp_path / "y_yellow.png"), signal)
    red_rgba = np.dstack([np.zeros_like(signal), np.zeros_like(signal), signal, alpha])
    cv2.imwrite(str(tmp_path / "y_red.png"), red_rgba)
    np.testing.assert_array_equal(read_greyscale(tmp_path / "y_red.png"), signal)


@pytest.mark.parametrize(
    ("image", "detail"),
    [
        (np.zeros((2, 5, 6), np.uint8), ""),
        (np.zeros((5, 6, 2), np.uint8), ""),
        (np.zeros((1, 1, 5, 6), np.uint8), ""),
        (np.zeros((5, 6), np.complex64), " (supported dtypes are uint8, uint16 and float in [0, 1])"),
        (np.zeros((5, 6), np.bool_), " (supported dtypes are uint8, uint16 and float in [0, 1])"),
        (np.zeros((5, 6), np.int32), " (supported dtypes are uint8, uint16 and float in [0, 1])"),
        (np.full((5, 6), 2.0, np.float32), " (float values must lie in [0, 1], found min 2.0, max 2.0)"),
        (np.full((5, 6), np.nan, np.float64), " (float values must lie in [0, 1], found min nan, max nan)"),
    ],
)
def test_not_greyscale_convertible(image: np.ndarray, detail: str) -> None:
    expected = f"cell.tif is not greyscale-convertible: shape {image.shape}, dtype {image.dtype}{detail}"
    with pytest.raises(NotGreyscaleError, match="^" + re.escape(expected) + "$"):
        to_greyscale(image, source="cell.tif")


def test_multi_page_tiff_in_a_sample_names_the_file(tmp_path: Path) -> None:
    write_sample(tmp_path, "s", random_sample(6, shape=(8, 8)), ext="tif")
    stack_path = tmp_path / "s_green.tif"
    tifffile.imwrite(stack_path, np.zeros((5, 8, 8), np.uint8))
    expected = f"{stack_path} is not greyscale-convertible: shape (5, 8, 8), dtype uint8"
    with pytest.raises(NotGreyscaleError, match=re.escape(expected)):
        read_sample(tmp_path, "s")


def test_separate_plane_rgb_tiff_is_read_as_colour(tmp_path: Path) -> None:
    signal = np.random.default_rng(7).integers(0, 256, (8, 9), dtype=np.uint8)
    planes = np.stack([signal, signal, np.zeros_like(signal)])
    tifffile.imwrite(tmp_path / "t_yellow.tif", planes, photometric="rgb", planarconfig="separate")
    np.testing.assert_array_equal(read_greyscale(tmp_path / "t_yellow.tif"), signal)


# ----------------------------------------------------------------------------------------------
# resizing
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "size", "expected"),
    [
        ((2048, 2048), 512, (512, 512)),
        ((3072, 3072), 512, (512, 512)),
        ((2048, 1024), 512, (512, 256)),
        ((1000, 3000), 300, (100, 300)),
        ((10, 1000), 50, (1, 50)),
        ((512, 512), 1024, (1024, 1024)),
        ((100, 200), (30, 40), (30, 40)),
    ],
)
def test_working_shape_keeps_aspect(
    shape: tuple[int, int], size: int | tuple[int, int], expected: tuple[int, int]
) -> None:
    assert working_shape(*shape, size) == expected


def test_working_shape_rejects_non_positive() -> None:
    with pytest.raises(ValueError, match=re.escape("size must be a positive int (the longer side), got 0")):
        working_shape(10, 10, 0)


def test_resize_image_is_area_mean_and_keeps_dtype() -> None:
    blocks = np.array([[0, 1000], [30000, 65535]], dtype=np.uint16)
    image_hw = np.kron(blocks, np.ones((4, 4), np.uint16)).astype(np.uint16)  # 8x8 of 4x4 constant blocks
    image_hw[0, 0] = 16  # one pixel off in the first block: its area mean is 1
    out = resize_image(image_hw, 2)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, [[1, 1000], [30000, 65535]])
    stack_chw = np.stack([image_hw, image_hw // 2])
    out_chw = resize_image(stack_chw, (2, 2))
    assert out_chw.shape == (2, 2, 2)
    np.testing.assert_array_equal(out_chw[0], out)
    assert resize_image(image_hw, 8) is image_hw


def scale_intensity_all(image_chw: np.ndarray) -> np.ndarray:
    """Full-range uint8 scaling of each plane of a C,H,W array."""
    return np.stack([scale_intensity(plane) for plane in image_chw])


def test_read_sample_with_working_size(tmp_path: Path) -> None:
    sample_chw = random_sample(8, shape=(64, 32), dtype=np.uint16)
    write_sample(tmp_path, "wide", sample_chw)
    out = read_sample(tmp_path, "wide", size=16)
    assert out.shape == (4, 16, 8) and out.dtype == np.uint8
    expected = np.stack([cv2.resize(plane, (8, 16), interpolation=cv2.INTER_AREA) for plane in sample_chw])
    np.testing.assert_array_equal(out, scale_intensity_all(expected))
    as_float = read_sample(tmp_path, "wide", size=(10, 12), dtype="float32")
    assert as_float.shape == (4, 10, 12) and as_float.dtype == np.float32


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.int32])
def test_resize_mask_nearest_keeps_ids_and_dtype(dtype: type) -> None:
    big_id = 70_000 if dtype != np.uint16 else 60_000
    blocks = np.array([[0, 1, 2], [3, big_id, 0]], dtype=dtype)
    mask_hw = np.kron(blocks, np.ones((3, 3), dtype=dtype)).astype(dtype)  # 6x9 of 3x3 blocks
    down = resize_mask(mask_hw, (2, 3))
    assert down.dtype == dtype
    np.testing.assert_array_equal(down, blocks)
    up = resize_mask(blocks, (4, 6))
    np.testing.assert_array_equal(up, np.repeat(np.repeat(blocks, 2, axis=0), 2, axis=1))
    odd = resize_mask(mask_hw, 5)
    assert odd.dtype == dtype and odd.shape == (3, 5)
    assert set(np.unique(odd)) <= set(np.unique(mask_hw))


def test_resize_mask_on_random_labels_is_a_subset() -> None:
    rng = np.random.default_rng(9)
    mask_hw = rng.integers(0, 100_000, (97, 131), dtype=np.uint32)
    small = resize_mask(mask_hw, 40)
    assert small.shape == (30, 40) and small.dtype == np.uint32
    assert set(np.unique(small)) <= set(np.unique(mask_hw))


# ----------------------------------------------------------------------------------------------
# scanning folders
# ----------------------------------------------------------------------------------------------


def test_scan_folder_complete_incomplete_ignored(tmp_path: Path) -> None:
    write_sample(tmp_path, "b_id-with_underscores", random_sample(10, shape=(4, 4)))
    write_sample(tmp_path, "a", random_sample(11, shape=(4, 4)), ext="tif")
    (tmp_path / "a_red.tif").rename(tmp_path / "a_red.TIF")
    (tmp_path / "a_green.tif").rename(tmp_path / "a_green.JPEG")  # only the name matters to the scan
    paths = write_sample(tmp_path, "c", random_sample(12, shape=(4, 4)))
    paths["green"].unlink()
    paths["yellow"].unlink()
    for name in ("notes.txt", "c_purple.png", "nounderscore.png", "._a_red.png", "labels.csv"):
        (tmp_path / name).write_text("x")
    (tmp_path / "subfolder_red.png").mkdir()

    scan = scan_folder(tmp_path)
    assert scan.ids == ["a", "b_id-with_underscores"]
    assert scan.complete["a"] == {
        "red": tmp_path / "a_red.TIF",
        "green": tmp_path / "a_green.JPEG",
        "blue": tmp_path / "a_blue.tif",
        "yellow": tmp_path / "a_yellow.tif",
    }
    assert list(scan.complete["b_id-with_underscores"]) == list(CHANNELS)
    assert scan.incomplete == {"c": ("green", "yellow")}
    assert [p.name for p in scan.ignored] == [
        "._a_red.png",
        "c_purple.png",
        "labels.csv",
        "notes.txt",
        "nounderscore.png",
    ]


def test_scan_folder_duplicate_channel_names_both_files(tmp_path: Path) -> None:
    write_sample(tmp_path, "x", random_sample(13, shape=(4, 4)))
    (tmp_path / "x_red.TIF").write_bytes(b"")
    expected = f"sample x: channel 'red' exists in two formats: {tmp_path / 'x_red.TIF'} and {tmp_path / 'x_red.png'}; keep one"
    with pytest.raises(DuplicateChannelError, match=re.escape(expected)):
        scan_folder(tmp_path)
    with pytest.raises(DuplicateChannelError, match=re.escape(expected)):
        read_sample(tmp_path, "x")


def test_scan_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(
        FileNotFoundError,
        match=re.escape(f"image folder {tmp_path / 'nope'} does not exist or is not a directory"),
    ):
        scan_folder(tmp_path / "nope")


def test_find_sample_files_ignores_ids_sharing_a_prefix(tmp_path: Path) -> None:
    write_sample(tmp_path, "a", random_sample(14, shape=(4, 4)))
    write_sample(tmp_path, "a_b", random_sample(15, shape=(4, 4)), ext="tif")
    assert [p.name for p in find_sample_files(tmp_path, "a").values()] == [f"a_{c}.png" for c in CHANNELS]
    assert [p.name for p in find_sample_files(tmp_path, "a_b").values()] == [f"a_b_{c}.tif" for c in CHANNELS]


# ----------------------------------------------------------------------------------------------
# read errors
# ----------------------------------------------------------------------------------------------


def test_missing_channel_message(tmp_path: Path) -> None:
    paths = write_sample(tmp_path, "X", random_sample(16, shape=(4, 4)))
    paths["yellow"].unlink()
    expected = (
        f"sample X: missing channel 'yellow' (looked for X_yellow.png/.jpg/.jpeg/.tif/.tiff in {tmp_path})"
    )
    with pytest.raises(MissingChannelError, match="^" + re.escape(expected) + "$") as caught:
        read_sample(tmp_path, "X")
    assert caught.value.sample_id == "X" and caught.value.missing == ("yellow",)
    paths["red"].unlink()
    expected_two = (
        f"sample X: missing channel 'red' (looked for X_red.png/.jpg/.jpeg/.tif/.tiff in {tmp_path}); "
        f"missing channel 'yellow' (looked for X_yellow.png/.jpg/.jpeg/.tif/.tiff in {tmp_path})"
    )
    with pytest.raises(MissingChannelError, match="^" + re.escape(expected_two) + "$"):
        read_sample(tmp_path, "X")


def test_read_sample_files_missing_key_and_sample_id_from_names(tmp_path: Path) -> None:
    paths = write_sample(tmp_path, "plate_7", random_sample(17, shape=(4, 4)))
    del paths["blue"]
    with pytest.raises(
        MissingChannelError,
        match="^" + re.escape("sample plate_7: missing channel 'blue' (no path given)") + "$",
    ):
        read_sample_files(paths)
    with pytest.raises(ValueError, match=re.escape("unknown channel names ['nucleus']; expected")):
        read_sample_files({**paths, "nucleus": tmp_path / "n.png"})


def test_unreadable_files_are_named(tmp_path: Path) -> None:
    paths = write_sample(tmp_path, "s", random_sample(18, shape=(16, 16)))
    good = paths["green"].read_bytes()
    paths["green"].write_bytes(good[: len(good) // 2])
    expected = f"{paths['green']}: cannot decode image (corrupt, truncated or not a .png file)"
    with pytest.raises(UnreadableImageError, match="^" + re.escape(expected) + "$"):
        read_sample(tmp_path, "s")
    paths["green"].write_bytes(b"")
    with pytest.raises(
        UnreadableImageError, match="^" + re.escape(f"{paths['green']}: file is empty (0 bytes)") + "$"
    ):
        read_sample(tmp_path, "s")
    paths["green"].unlink()
    with pytest.raises(
        UnreadableImageError,
        match="^" + re.escape(f"{paths['green']}: cannot read file (No such file or directory)") + "$",
    ):
        read_sample_files(paths)
    (tmp_path / "t_red.tif").write_bytes(b"this is not a tiff")
    with pytest.raises(
        UnreadableImageError,
        match=re.escape(f"{tmp_path / 't_red.tif'}: cannot decode TIFF (not a TIFF file"),
    ):
        read_greyscale(tmp_path / "t_red.tif")


def test_channels_of_different_shapes(tmp_path: Path) -> None:
    write_sample(tmp_path, "s", random_sample(19, shape=(8, 8)))
    cv2.imwrite(str(tmp_path / "s_blue.png"), np.zeros((6, 8), np.uint8) + 1)
    expected = (
        "sample s: channels differ in shape: red (8, 8) (s_red.png), green (8, 8) (s_green.png), "
        "blue (6, 8) (s_blue.png), yellow (8, 8) (s_yellow.png)"
    )
    with pytest.raises(ChannelShapeError, match="^" + re.escape(expected) + "$"):
        read_sample(tmp_path, "s")


def test_empty_channel_is_a_warning_naming_the_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sample_chw = random_sample(20, shape=(8, 8))
    sample_chw[3] = 0
    paths = write_sample(tmp_path, "s", sample_chw)
    with caplog.at_level(logging.WARNING, logger="hpa_cells.images"):
        out = read_sample(tmp_path, "s")
    np.testing.assert_array_equal(out, sample_chw)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == [
        f"sample s: channel 'yellow' is empty (all zero): {paths['yellow']}"
    ]


# ----------------------------------------------------------------------------------------------
# the layouts users bring: HPA website JPEGs, 16-bit 2021 PNGs, the automatic working size
# ----------------------------------------------------------------------------------------------

DISPLAY_COLOURS_RGB = {"red": (1, 0, 0), "green": (0, 1, 0), "blue": (0, 0, 1), "yellow": (1, 1, 0)}


def write_website_sample(folder: Path, sample_id: str, sample_chw: np.ndarray, tint: int = 0) -> None:
    """Each channel as an RGB JPEG in its display colour, the way proteinatlas.org serves them; `tint` is a
    constant level put into the planes that should be dark (colour bleeding, exaggerated)."""
    for channel, plane in zip(CHANNELS, sample_chw, strict=True):
        weights = np.array(DISPLAY_COLOURS_RGB[channel])
        rgb = np.stack([plane if weight else np.full_like(plane, tint) for weight in weights], axis=2)
        cv2.imwrite(str(folder / f"{sample_id}_{channel}.jpg"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, 100])


def test_website_layout_reads_each_channel_from_its_display_colour(tmp_path: Path) -> None:
    sample_chw = np.zeros((4, 32, 48), np.uint8)
    for index in range(4):  # smooth ramps with a different level per channel survive JPEG closely
        sample_chw[index] = np.linspace(20 + 30 * index, 120 + 30 * index, 48).astype(np.uint8)[None, :]
    write_website_sample(tmp_path, "1234_A1_1", sample_chw, tint=90)
    (tmp_path / "1234_A1_1_blue_red_green.jpg").write_bytes((tmp_path / "1234_A1_1_red.jpg").read_bytes())
    scan = scan_folder(tmp_path)
    assert scan.ids == ["1234_A1_1"] and scan.incomplete == {}
    assert [p.name for p in scan.ignored] == ["1234_A1_1_blue_red_green.jpg"]
    read_chw = read_sample(tmp_path, "1234_A1_1")
    assert read_chw.shape == (4, 32, 48) and read_chw.dtype == np.uint8
    error = np.abs(read_chw.astype(int) - sample_chw.astype(int))
    assert error.max() <= 6, error.max(axis=(1, 2))  # the colour's plane(s), not the tinted others
    # the per-pixel maximum over the planes (what a colour file without its channel gives) takes the tint
    red_any = to_greyscale(cv2.imread(str(tmp_path / "1234_A1_1_red.jpg"), cv2.IMREAD_UNCHANGED))
    assert np.abs(red_any.astype(int) - sample_chw[0]).max() >= 60  # 90 where the red ramp starts at 20


def test_display_colour_planes_exactly() -> None:
    rng = np.random.default_rng(9)
    for dtype, top in ((np.uint8, 255), (np.uint16, 65535)):
        bgr = rng.integers(0, top + 1, (5, 6, 3)).astype(dtype)
        np.testing.assert_array_equal(to_greyscale(bgr, channel="red"), bgr[:, :, 2])
        np.testing.assert_array_equal(to_greyscale(bgr, channel="green"), bgr[:, :, 1])
        np.testing.assert_array_equal(to_greyscale(bgr, channel="blue"), bgr[:, :, 0])
        yellow = to_greyscale(bgr, channel="yellow")
        expected = np.floor((bgr[:, :, 2].astype(np.float64) + bgr[:, :, 1]) / 2 + 0.5).astype(dtype)
        assert yellow.dtype == dtype
        np.testing.assert_array_equal(yellow, expected)
    with pytest.raises(ValueError, match=r"^unknown channel 'purple'"):
        to_greyscale(bgr, channel="purple")


def test_16_bit_2021_style_png_sample(tmp_path: Path) -> None:
    sample_chw = random_sample(21, (40, 40), np.uint16)
    write_sample(tmp_path, "5c27f04c-bb99-11e8-b2b9-ac1f6b6435d0", sample_chw)
    assert decode_with_pil(tmp_path / "5c27f04c-bb99-11e8-b2b9-ac1f6b6435d0_green.png").dtype == np.uint16
    read_chw = read_sample(tmp_path, "5c27f04c-bb99-11e8-b2b9-ac1f6b6435d0")
    np.testing.assert_array_equal(read_chw, ((sample_chw.astype(np.uint32) + 128) // 257).astype(np.uint8))


@pytest.mark.parametrize(("shape", "expected"), [
    ((512, 512), 512),  # 2018 Kaggle: a 2048 px field already shrunk 4x, kept
    ((256, 256), 512),  # small whole fields: as before, the longer side becomes 512
    ((1024, 800), 512),
    ((2048, 2048), 512),  # 2021 / website, full resolution: shrunk 4x
    ((3072, 3072), 768),
    ((1728, 1728), 432),
    ((2048, 3072), 768),
])
def test_auto_working_size(shape: tuple[int, int], expected: int) -> None:
    assert auto_working_size(*shape) == expected


# ----------------------------------------------------------------------------------------------
# real HPA files
# ----------------------------------------------------------------------------------------------

HPA2018_ID = "837e738c-bba8-11e8-b2ba-ac1f6b6435d0"
HPA2021_SIDES = {
    "000a6c98-bb9b-11e8-b2b9-ac1f6b6435d0": 2048,
    "a34d8680-bb99-11e8-b2b9-ac1f6b6435d0": 2048,
    "a7faf0b4-bb99-11e8-b2b9-ac1f6b6435d0": 3072,
    "b6a469d8-bbad-11e8-b2ba-ac1f6b6435d0": 2048,
    "f0ac7116-bb99-11e8-b2b9-ac1f6b6435d0": 2048,
}


@pytest.mark.real
def test_real_2018_sample(real_data: Path) -> None:
    folder = real_data / "hpa2018_sample"
    scan = scan_folder(folder)
    assert scan.ids == [HPA2018_ID] and scan.incomplete == {}
    assert [p.name for p in scan.ignored] == ["labels.csv"]
    sample_chw = read_sample(folder, HPA2018_ID)
    assert sample_chw.shape == (4, 512, 512) and sample_chw.dtype == np.uint8
    for index, channel in enumerate(CHANNELS):
        np.testing.assert_array_equal(
            sample_chw[index], decode_with_pil(folder / f"{HPA2018_ID}_{channel}.png")
        )
    assert all(sample_chw[index].max() > 0 for index in range(4))


@pytest.mark.real
def test_real_2021_fields(real_data: Path) -> None:
    folder = real_data / "hpa2021_subset" / "images"
    scan = scan_folder(folder)
    assert scan.ids == sorted(HPA2021_SIDES) and scan.incomplete == {} and scan.ignored == ()
    for sample_id, side in HPA2021_SIDES.items():
        sample_chw = read_sample_files(scan.complete[sample_id])
        assert sample_chw.shape == (4, side, side) and sample_chw.dtype == np.uint8, sample_id
        for index, channel in enumerate(CHANNELS):
            direct = decode_with_pil(scan.complete[sample_id][channel])
            assert direct.shape == (side, side) and direct.dtype == np.uint8
            np.testing.assert_array_equal(sample_chw[index], direct, err_msg=f"{sample_id} {channel}")


@pytest.mark.real
def test_real_2021_field_at_working_size(real_data: Path) -> None:
    folder = real_data / "hpa2021_subset" / "images"
    sample_id = "a7faf0b4-bb99-11e8-b2b9-ac1f6b6435d0"  # the 3072 px field
    small_chw = read_sample(folder, sample_id, size=512, dtype="float32")
    assert small_chw.shape == (4, 512, 512) and small_chw.dtype == np.float32
    green = cv2.imread(str(folder / f"{sample_id}_green.png"), cv2.IMREAD_UNCHANGED)
    expected = cv2.resize(green, (512, 512), interpolation=cv2.INTER_AREA) / np.float32(255)
    np.testing.assert_allclose(small_chw[1], expected, atol=1e-6)
    assert 0.0 <= small_chw.min() and small_chw.max() <= 1.0


@pytest.mark.real
def test_real_2021_fields_get_the_auto_working_size(real_data: Path) -> None:
    scan = scan_folder(real_data / "hpa2021_subset" / "images")
    for sample_id, side in HPA2021_SIDES.items():
        assert auto_working_size(side, side) == side // 4, sample_id
    sample_id = "a7faf0b4-bb99-11e8-b2b9-ac1f6b6435d0"  # the 3072 px field: 768 px, cells as large as at 2048 -> 512
    field_chw = read_sample_files(scan.complete[sample_id], size=auto_working_size(3072, 3072))
    assert field_chw.shape == (4, 768, 768) and all(field_chw[i].max() > 0 for i in range(4))


@pytest.mark.real
def test_real_2021_masks(real_data: Path) -> None:
    masks = real_data / "hpa2021_subset" / "masks"
    for sample_id, side in HPA2021_SIDES.items():
        path = masks / f"{sample_id}_predictedmask.png"
        mask_hw = read_label_mask(path)
        assert mask_hw.shape == (side, side) and mask_hw.dtype == np.uint16, sample_id
        np.testing.assert_array_equal(mask_hw, decode_with_pil(path))
        cell_ids = np.unique(mask_hw)
        assert cell_ids[0] == 0 and len(cell_ids) - 1 > 0, sample_id
        small = resize_mask(mask_hw, 512)
        assert small.shape == (512, 512) and set(np.unique(small)) <= set(cell_ids.tolist())
