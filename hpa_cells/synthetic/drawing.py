"""Rasterisation primitives for the synthetic generator: smooth noise, Gaussian spots, anti-aliased lines.

Everything works on `H,W` float32 images (a cell's crop or a whole field) and is vectorised or done by
one OpenCV call per group of objects, so drawing thousands of objects per image stays cheap.
Coordinates are `(y, x)` pairs in the image's pixel frame, pixel centres at integers.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

LINE_SHIFT = 4
"""Fractional bits for sub-pixel line end points in cv2 drawing calls (1/16 px)."""


CUBIC_NOISE_STD = 0.86
"""Standard deviation of i.i.d. standard-normal values enlarged with bicubic interpolation (measured)."""


def smooth_noise(rng: np.random.Generator, shape_hw: tuple[int, int], scale: float) -> np.ndarray:
    """`H,W` float32 smooth random field with zero mean and unit variance (in expectation), correlation
    length ~`scale` px.

    Drawn at a reduced resolution (one value per `scale` px) and enlarged bicubically, which is much
    cheaper than blurring full-resolution noise and gives the same look.
    """
    height, width = shape_hw
    scale = max(float(scale), 1.0)
    low_h, low_w = max(2, int(np.ceil(height / scale)) + 2), max(2, int(np.ceil(width / scale)) + 2)
    low = rng.standard_normal((low_h, low_w), dtype=np.float32)
    low *= np.float32(1.0 / CUBIC_NOISE_STD)
    field = cv2.resize(
        low, (int(round(low_w * scale)), int(round(low_h * scale))), interpolation=cv2.INTER_CUBIC
    )
    if field.shape[0] < height or field.shape[1] < width:
        field = cv2.resize(low, (width, height), interpolation=cv2.INTER_CUBIC)
    return field[:height, :width]


@dataclass(frozen=True)
class PolylineSet:
    """`n` poly-lines stored together: `points_yx` is `n,k,2` (sub-pixel `(y, x)`), line i uses its first
    `lengths[i]` points (>= 2 to be drawn). Vectorised so thousands of fibres cost a few array ops."""

    points_yx: np.ndarray
    lengths: np.ndarray

    @classmethod
    def from_array(cls, points_yx: np.ndarray) -> PolylineSet:
        """Lines that all use every point of an `n,k,2` array."""
        points_yx = np.asarray(points_yx, dtype=np.float64).reshape(-1, np.shape(points_yx)[-2], 2)
        return cls(points_yx, np.full(len(points_yx), points_yx.shape[1], dtype=np.intp))

    @classmethod
    def empty(cls) -> PolylineSet:
        return cls(np.zeros((0, 2, 2)), np.zeros(0, dtype=np.intp))

    def __len__(self) -> int:
        return len(self.lengths)

    def point_at(self, positions: np.ndarray) -> np.ndarray:
        """`n,2` the point with index `positions[i]` of line i (clipped to the line)."""
        index = np.clip(positions, 0, np.maximum(self.lengths - 1, 0))
        return self.points_yx[np.arange(len(self)), index]


def gaussian_spots(
    shape_hw: tuple[int, int], centres_yx: np.ndarray, sigma: float, amplitudes: np.ndarray | float = 1.0
) -> np.ndarray:
    """`H,W` float32 sum of isotropic Gaussian spots of width `sigma`; `amplitudes` are peak heights.

    Each centre (`N,2`, sub-pixel) is splatted bilinearly onto four pixels and the image is blurred
    once, so the cost does not grow with the number of spots. Centres outside the crop are dropped.
    """
    height, width = shape_hw
    centres_yx = np.asarray(centres_yx, dtype=np.float64).reshape(-1, 2)
    if centres_yx.size == 0 or height < 2 or width < 2:
        return np.zeros(shape_hw, dtype=np.float32)
    amplitudes = np.broadcast_to(np.asarray(amplitudes, dtype=np.float64), (len(centres_yx),))
    y = np.clip(centres_yx[:, 0], 0.0, height - 1.0)
    x = np.clip(centres_yx[:, 1], 0.0, width - 1.0)
    keep = (centres_yx[:, 0] == y) & (centres_yx[:, 1] == x)
    y, x, amplitudes = y[keep], x[keep], amplitudes[keep]
    y0 = np.minimum(y.astype(np.intp), height - 2)
    x0 = np.minimum(x.astype(np.intp), width - 2)
    fy, fx = y - y0, x - x0
    base = y0 * width + x0
    index = np.concatenate([base, base + 1, base + width, base + width + 1])
    weights = np.concatenate(
        [
            amplitudes * (1 - fy) * (1 - fx),
            amplitudes * (1 - fy) * fx,
            amplitudes * fy * (1 - fx),
            amplitudes * fy * fx,
        ]
    )
    canvas = np.bincount(index, weights, minlength=height * width).astype(np.float32).reshape(height, width)
    sigma = max(float(sigma), 0.3)
    canvas = cv2.GaussianBlur(canvas, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_CONSTANT)
    canvas *= np.float32(2.0 * np.pi * sigma * sigma)
    return canvas


INTENSITY_LEVELS = 16
"""Line intensities are quantised to this many grey levels, one cv2 call per level."""


def draw_polylines(
    shape_hw: tuple[int, int],
    lines: PolylineSet,
    intensities: np.ndarray | float = 1.0,
    thickness: int = 1,
) -> np.ndarray:
    """`H,W` float32 image of anti-aliased open poly-lines, values in [0, 1].

    End points are sub-pixel; where lines cross, the brighter one wins (no sum), which keeps crossings
    from saturating. `intensities` is one value or one per line, quantised to `INTENSITY_LEVELS`.
    """
    canvas = np.zeros(shape_hw, dtype=np.uint8)
    drawable = np.flatnonzero(lines.lengths >= 2)
    if drawable.size == 0:
        return canvas.astype(np.float32)
    values = np.broadcast_to(np.asarray(intensities, dtype=np.float64), (len(lines),))
    levels = np.clip(np.rint(values * (INTENSITY_LEVELS - 1)), 0, INTENSITY_LEVELS - 1).astype(np.intp)
    fixed = np.rint(lines.points_yx[..., ::-1] * float(1 << LINE_SHIFT)).astype(np.int32)
    for level in np.unique(levels[drawable]):
        if level == 0:
            continue
        group = [fixed[i, : lines.lengths[i]] for i in drawable[levels[drawable] == level]]
        colour = int(round(level * 255 / (INTENSITY_LEVELS - 1)))
        cv2.polylines(
            canvas,
            group,
            False,
            color=colour,
            thickness=int(thickness),
            lineType=cv2.LINE_AA,
            shift=LINE_SHIFT,
        )
    return canvas.astype(np.float32) * np.float32(1.0 / 255.0)


def draw_rings(
    shape_hw: tuple[int, int],
    centres_yx: np.ndarray,
    radii: np.ndarray,
    intensities: np.ndarray | float = 1.0,
    thickness: int = 1,
) -> np.ndarray:
    """`H,W` float32 image of anti-aliased circles (rings, not discs), values in [0, 1]."""
    canvas = np.zeros(shape_hw, dtype=np.uint8)
    centres_yx = np.asarray(centres_yx, dtype=np.float64).reshape(-1, 2)
    radii = np.broadcast_to(np.asarray(radii, dtype=np.float64), (len(centres_yx),))
    values = np.broadcast_to(np.asarray(intensities, dtype=np.float64), (len(centres_yx),))
    scale = float(1 << LINE_SHIFT)
    for (cy, cx), radius, value in zip(centres_yx, radii, values, strict=True):
        cv2.circle(
            canvas,
            (int(round(cx * scale)), int(round(cy * scale))),
            max(1, int(round(radius * scale))),
            color=int(np.clip(round(value * 255), 0, 255)),
            thickness=int(thickness),
            lineType=cv2.LINE_AA,
            shift=LINE_SHIFT,
        )
    return canvas.astype(np.float32) * np.float32(1.0 / 255.0)


def blur(image_hw: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of a float32 crop with zero padding (signal does not leak in from outside the crop)."""
    if sigma <= 0:
        return image_hw
    return cv2.GaussianBlur(
        image_hw, (0, 0), sigmaX=float(sigma), sigmaY=float(sigma), borderType=cv2.BORDER_CONSTANT
    )


def sample_points_in_mask(
    rng: np.random.Generator, mask_hw: np.ndarray, count: int, weights_hw: np.ndarray | None = None
) -> np.ndarray:
    """`count,2` random sub-pixel `(y, x)` positions inside `mask_hw`, optionally weighted per pixel.

    Picks pixels (with replacement) in proportion to `weights_hw` and jitters within the pixel.
    Returns an empty `0,2` array when the mask is empty or `count` is 0.
    """
    ys, xs = np.nonzero(mask_hw)
    if count <= 0 or ys.size == 0:
        return np.zeros((0, 2), dtype=np.float64)
    if weights_hw is None:
        picks = rng.integers(0, ys.size, size=count)
    else:
        weights = np.asarray(weights_hw, dtype=np.float64)[ys, xs]
        total = weights.sum()
        if total <= 0:
            picks = rng.integers(0, ys.size, size=count)
        else:
            cumulative = np.cumsum(weights)
            picks = np.minimum(
                np.searchsorted(cumulative, rng.random(count) * total, side="right"), ys.size - 1
            )
    jitter = rng.random((count, 2)) - 0.5
    return np.stack([ys[picks], xs[picks]], axis=1).astype(np.float64) + jitter
