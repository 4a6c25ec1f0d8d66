"""Image formation for synthetic fields: optical blur, out-of-focus haze, gain, offset, noise, 8-bit output.

`acquire` turns the noiseless `4,H,W` signal canvases into what a confocal microscope would record:
a Gaussian point-spread function, a little out-of-focus haze, per-channel gain and background offset,
signal-dependent shot noise plus read noise (Poisson-Gaussian, with the Poisson part approximated by a
Gaussian of matching variance), then clipping and rounding to uint8. Settings vary per image
(`draw_acquisition`) so brightness, contrast and noise differ between images as they do in HPA data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

from hpa_cells.channels import NUM_CHANNELS
from hpa_cells.synthetic.cell_lines import length_scale


@dataclass(frozen=True)
class Acquisition:
    """Per-image imaging settings, one value per channel (red, green, blue, yellow) where a tuple.

    `gain` maps canvas units to grey levels (the green canvas is already in grey levels, gain 1);
    `photons_per_level` sets shot noise (variance = level / photons_per_level); `read_noise` is in
    grey levels; `haze` is the fraction of out-of-focus light added back as a wide blur.
    """

    psf_sigma: float
    gain: tuple[float, float, float, float]
    offset: tuple[float, float, float, float]
    read_noise: tuple[float, float, float, float]
    photons_per_level: tuple[float, float, float, float]
    haze: tuple[float, float, float, float]

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def draw_acquisition(rng: np.random.Generator, size: int) -> Acquisition:
    """Random imaging settings for one image of `size` px."""
    scale = length_scale(size)

    def four(low: float, high: float) -> tuple[float, float, float, float]:
        values = rng.uniform(low, high, NUM_CHANNELS)
        return (float(values[0]), float(values[1]), float(values[2]), float(values[3]))

    gain = four(85.0, 165.0)
    return Acquisition(
        psf_sigma=float(max(rng.uniform(0.6, 1.0) * scale, 0.45)),
        gain=(gain[0], 1.0, gain[2] * 1.15, gain[3] * 1.4),
        offset=four(0.0, 4.0),
        read_noise=four(0.6, 2.2),
        photons_per_level=four(1.5, 6.0),
        haze=four(0.02, 0.08),
    )


def approximate_normal(rng: np.random.Generator, shape_hw: tuple[int, int]) -> np.ndarray:
    """`H,W` float32 approximately standard-normal noise from 3 uniform bytes per pixel (Irwin-Hall).

    About 5x faster than `Generator.standard_normal` for image-sized arrays; tails end at +-3.5 sigma,
    which does not matter for 8-bit image noise.
    """
    count = shape_hw[0] * shape_hw[1]
    raw = np.frombuffer(rng.bytes(3 * count), dtype=np.uint8).reshape(3, count)
    total = raw.sum(axis=0, dtype=np.uint16).astype(np.float32)
    total -= np.float32(3 * 127.5)
    total *= np.float32(1.0 / np.sqrt(3 * (256.0**2 - 1) / 12.0))
    return total.reshape(shape_hw)


def _haze(plane: np.ndarray, scale: float) -> np.ndarray:
    """Wide blur of a plane (out-of-focus light), computed at quarter resolution."""
    height, width = plane.shape
    small = cv2.resize(plane, (max(width // 4, 1), max(height // 4, 1)), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigmaX=max(2.0 * scale, 0.7))
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


def acquire(signal_chw: np.ndarray, acquisition: Acquisition, rng: np.random.Generator) -> np.ndarray:
    """Blur, scale, offset and add noise to a `4,H,W` float32 signal; returns the `4,H,W` uint8 image."""
    if signal_chw.ndim != 3 or signal_chw.shape[0] != NUM_CHANNELS:
        raise ValueError(f"expected a {NUM_CHANNELS},H,W signal, got shape {signal_chw.shape}")
    channels, height, width = signal_chw.shape
    scale = length_scale(max(height, width))
    image = np.empty((channels, height, width), dtype=np.uint8)
    sigma = acquisition.psf_sigma
    for channel in range(channels):
        plane = cv2.GaussianBlur(signal_chw[channel], (0, 0), sigmaX=sigma, sigmaY=sigma)
        plane += np.float32(acquisition.haze[channel]) * _haze(plane, scale)
        plane *= np.float32(acquisition.gain[channel])
        plane += np.float32(acquisition.offset[channel])
        variance = np.maximum(plane, np.float32(0.0)) * np.float32(
            1.0 / acquisition.photons_per_level[channel]
        )
        variance += np.float32(acquisition.read_noise[channel] ** 2)
        plane += cv2.sqrt(variance) * approximate_normal(rng, (height, width))
        np.clip(plane, 0.0, 255.0, out=plane)
        image[channel] = np.rint(plane).astype(np.uint8)
    return image
