"""Tests for hpa_cells.normalisation: the one percentile normaliser reproduces, bit for bit, the two it replaced."""

from __future__ import annotations

import numpy as np
import pytest

from hpa_cells.normalisation import normalise_percentile
from segmentation.cellpose_segmenter import normalize_percentile
from segmentation.preprocessing import normalize_channel


def _old_watershed_normaliser(channel: np.ndarray, low_percentile: float = 1.0,
                              high_percentile: float = 99.8) -> np.ndarray:
    """segmentation/preprocessing.py normalize_channel as of c075ba3 (the reference to stay identical to)."""
    values = channel.astype(np.float32)
    low, high = np.percentile(values, [low_percentile, high_percentile])
    if high <= low:
        return np.zeros_like(values)
    return np.clip((values - low) / (high - low), 0.0, 1.0)


def _old_cellpose_normaliser(channel: np.ndarray, low: float = 1.0, high: float = 99.0) -> np.ndarray:
    """segmentation/cellpose_segmenter.py normalize_percentile as of c075ba3."""
    values = channel.astype(np.float32)
    lo, hi = (float(v) for v in np.percentile(values, [low, high]))
    if hi - lo < 1e-3:
        return np.zeros_like(values)
    return (values - lo) / (hi - lo)


def _random_channels() -> list[np.ndarray]:
    rng = np.random.default_rng(12)
    channels = []
    for shape in [(64, 64), (37, 91), (128, 128)]:
        channels.append(rng.integers(0, 256, shape, dtype=np.uint8))
        channels.append(rng.integers(0, 65536, shape, dtype=np.uint16))
        channels.append((rng.gamma(0.6, 900.0, shape)).astype(np.uint16))  # dim, skewed, like real 16-bit data
        channels.append(rng.random(shape, dtype=np.float32))
        channels.append((rng.random(shape) * 3e-4).astype(np.float32))  # nearly flat: below Cellpose's 1e-3
    return channels


@pytest.mark.parametrize("percentiles", [(1.0, 99.8), (0.0, 100.0), (5.0, 95.0), (1.0, 99.0)])
def test_watershed_setting_is_bit_identical_to_the_old_normaliser(percentiles: tuple[float, float]) -> None:
    for channel in _random_channels():
        new, old = normalize_channel(channel, *percentiles), _old_watershed_normaliser(channel, *percentiles)
        assert new.dtype == old.dtype == np.float64
        assert np.array_equal(new, old)


@pytest.mark.parametrize("percentiles", [(1.0, 99.0), (0.0, 100.0), (2.0, 98.0)])
def test_cellpose_setting_is_bit_identical_to_the_old_normaliser(percentiles: tuple[float, float]) -> None:
    for channel in _random_channels():
        new, old = normalize_percentile(channel, *percentiles), _old_cellpose_normaliser(channel, *percentiles)
        assert new.dtype == old.dtype == np.float32
        assert np.array_equal(new, old)


def test_flat_channels_become_zeros() -> None:
    flat = np.full((8, 8), 7, np.uint8)
    assert not normalise_percentile(flat).any()
    assert np.array_equal(normalize_channel(flat), _old_watershed_normaliser(flat))
    assert np.array_equal(normalize_percentile(flat), _old_cellpose_normaliser(flat))
    assert normalize_percentile(flat).dtype == np.float32
    tiny = np.zeros((8, 8), np.float32)
    tiny[0, 0] = 5e-4
    tiny[0, 1] = 9e-4
    assert not normalise_percentile(tiny, 0, 100, min_range=1e-3).any()
    assert normalise_percentile(tiny, 0, 100).max() == 1.0


def test_percentiles_map_to_0_and_1_and_clip_is_optional() -> None:
    channel = np.arange(101, dtype=np.uint8).reshape(1, 101)
    clipped = normalise_percentile(channel, 10, 90)
    assert clipped.min() == 0.0 and clipped.max() == 1.0
    assert clipped[0, 50] == pytest.approx(0.5)
    unclipped = normalise_percentile(channel, 10, 90, clip=False, precision="float32")
    assert unclipped.dtype == np.float32
    assert unclipped[0, 0] == pytest.approx(-0.125) and unclipped[0, 100] == pytest.approx(1.125)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="expects an H,W channel"):
        normalise_percentile(np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="low_percentile < high_percentile"):
        normalise_percentile(np.zeros((4, 4), np.uint8), 50, 50)
    with pytest.raises(ValueError, match="precision must be one of"):
        normalise_percentile(np.zeros((4, 4), np.uint8), precision="float16")
