"""Cell and nucleus shapes of the synthetic generator: irregular super-ellipses (`BlobShape`).

Each shape is a super-ellipse (centre, radius, axis ratio, angle, exponent) with low-order radial
harmonics; its normalised distance (< 1 inside) is evaluated on pixel grids through a 256-entry angular
profile. Points are `(y, x)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import cv2
import numpy as np

ANGLE_BINS = 256
"""Angular resolution of the shape profiles looked up in `BlobShape.distance` (256: one uint8 index)."""

MAX_HARMONIC_ORDER = 8

# Read-only angle tables for the shape profiles (constants, computed once at import).
_PHI = np.arange(ANGLE_BINS) * (2 * np.pi / ANGLE_BINS)
_LOG_ABS_COS = np.log(np.maximum(np.abs(np.cos(_PHI)), 1e-12)).astype(np.float32)
_LOG_ABS_SIN = np.log(np.maximum(np.abs(np.sin(_PHI)), 1e-12)).astype(np.float32)
_COS_ORDERS = np.cos(np.arange(2, MAX_HARMONIC_ORDER + 1)[:, None] * _PHI[None, :]).astype(np.float32)
_SIN_ORDERS = np.sin(np.arange(2, MAX_HARMONIC_ORDER + 1)[:, None] * _PHI[None, :]).astype(np.float32)
for _table in (_PHI, _LOG_ABS_COS, _LOG_ABS_SIN, _COS_ORDERS, _SIN_ORDERS):
    _table.setflags(write=False)


@dataclass(frozen=True)
class BlobShape:
    """An irregular super-ellipse: centre, radius (geometric mean of the semi-axes), axis ratio, angle,
    exponent, and radial harmonics (complex amplitude per order 2, 3, ...)."""

    centre_yx: tuple[float, float]
    radius: float
    elongation: float = 1.0
    angle: float = 0.0
    squareness: float = 2.0
    harmonics: tuple[complex, ...] = ()

    def semi_axes(self) -> tuple[float, float]:
        """(along `angle`, across) semi-axis lengths."""
        root = math.sqrt(self.elongation)
        return self.radius * root, self.radius / root

    @cached_property
    def reach(self) -> float:
        """A radius that surely encloses the shape."""
        return (
            self.radius * float(np.sqrt(self.elongation)) * (1.0 + sum(abs(h) for h in self.harmonics)) + 1.0
        )

    @cached_property
    def _profile(self) -> np.ndarray:
        """`ANGLE_BINS,` float32: normalised distance per unit ellipse radius, by angle in the ellipse frame."""
        if abs(self.squareness - 2.0) < 1e-6:
            profile = np.ones(ANGLE_BINS, dtype=np.float32)
        else:
            p = np.float32(self.squareness)
            profile = np.exp(np.log(np.exp(p * _LOG_ABS_COS) + np.exp(p * _LOG_ABS_SIN)) / p)
        if self.harmonics:
            count = len(self.harmonics)
            if count > MAX_HARMONIC_ORDER - 1:
                raise ValueError(f"at most {MAX_HARMONIC_ORDER - 1} harmonics are supported, got {count}")
            amplitudes = np.asarray(self.harmonics, dtype=np.complex64)
            rho = np.float32(1.0) + (
                amplitudes.real[:, None] * _COS_ORDERS[:count]
                - amplitudes.imag[:, None] * _SIN_ORDERS[:count]
            ).sum(axis=0)
            profile = profile / np.maximum(rho, np.float32(0.3))
        return profile.astype(np.float32)

    def distance(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """Normalised distance (< 1 inside) on the grid `ys` (`h,1`) x `xs` (`1,w`), float32.

        The radius in the frame where the shape's ellipse is a unit circle, times an angular profile
        (super-ellipse exponent and harmonics) looked up in a 256-entry table with `cv2.LUT`.
        """
        along, across = self.semi_axes()
        cos_a, sin_a = math.cos(self.angle), math.sin(self.angle)
        dy = ys.ravel() - self.centre_yx[0]  # Python floats keep float32 arrays float32
        dx = xs.ravel() - self.centre_yx[1]
        u = np.add.outer(dy * (sin_a / along), dx * (cos_a / along))
        v = np.add.outer(dy * (cos_a / across), dx * (-sin_a / across))
        radius, angle = cv2.cartToPolar(u, v)
        if self.squareness == 2.0 and not self.harmonics:
            return radius
        angle *= ANGLE_BINS / (2 * math.pi)
        index = np.minimum(angle, ANGLE_BINS - 1.0).astype(np.uint8)
        radius *= cv2.LUT(index, self._profile)
        return radius


def random_harmonics(rng: np.random.Generator, amplitude: float, orders: int) -> tuple[complex, ...]:
    """Random radial harmonics for orders 2..orders+1, amplitude decaying with the order."""
    magnitudes = amplitude * rng.uniform(0.3, 1.0, orders) / np.arange(1, orders + 1) ** 0.6
    phases = rng.uniform(0, 2 * np.pi, orders)
    return tuple(complex(m * np.cos(p), m * np.sin(p)) for m, p in zip(magnitudes, phases, strict=True))
