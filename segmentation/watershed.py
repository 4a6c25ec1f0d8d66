"""Classical baseline segmenter: nuclei by threshold + distance-transform watershed, cells by
seeded watershed from the nuclei on the microtubule + ER signal.

Steps for one `4,H,W` field (channels red, green, blue, yellow):
1. Nuclei: smooth the normalised nucleus (blue) channel, threshold it (Otsu, never below a
   floor, so an empty field stays empty), fill holes and drop specks. Touching nuclei are split
   by a watershed on the smoothed distance transform, seeded at its peaks, which must lie a set
   fraction of a nucleus diameter apart.
2. Cells: the cytoplasm signal is the mean of the normalised microtubule (red) and ER (yellow)
   channels, smoothed. Its Li threshold (scaled down, because cell edges are dim) closed
   morphologically and hole-filled, plus the nuclei, is the cell/background mask. A watershed
   seeded with the nuclei floods an elevation that rises with the distance from the nuclei and
   falls with the cytoplasm signal, so each cell grows from exactly one nucleus and borders
   settle in the dim gaps between cells. Foreground no nucleus reaches stays background.

Lengths are given for a 512 px field (an HPA 2048 px field shrunk 4x) and scale with the
image side; by default the nucleus diameter is then re-estimated from the image itself, which
keeps seeds right for fields at another magnification (e.g. a 3072 px field shrunk to 512).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import skimage
from scipy import ndimage as ndi
from skimage import filters
from skimage.feature import peak_local_max
from skimage.segmentation import relabel_sequential, watershed

from hpa_cells.channels import ER, MICROTUBULE, NUCLEUS
from segmentation.preprocessing import check_field_image, normalize_channel
from segmentation.quality_control import QCConfig
from segmentation.result import SegmentationResult, build_result

logger = logging.getLogger(__name__)

ThresholdMethod = Literal["li", "otsu", "triangle"]
_THRESHOLDS = {
    "li": filters.threshold_li,
    "otsu": filters.threshold_otsu,
    "triangle": filters.threshold_triangle,
}


@dataclass(frozen=True)
class WatershedConfig:
    """Settings of the watershed baseline; lengths in pixels at `reference_size`.

    reference_size: image side (min of H, W) the pixel lengths below are given for; they are
        multiplied by `min(H, W) / reference_size`.
    nucleus_diameter_px: expected nucleus diameter (about 45 px in a 512 px HPA field).
    estimate_nucleus_diameter: replace the expected diameter by the median equivalent diameter
        of the thresholded nuclei of each image, kept within 0.5x-2x of the expected one.
    nucleus_sigma_px: Gaussian smoothing of the nucleus channel before thresholding.
    nucleus_threshold_floor: lowest allowed nucleus threshold on the [0, 1] normalised channel.
    min_nucleus_area_fraction: nuclei smaller than this fraction of the expected nucleus area
        (pi d^2 / 4) are removed as specks.
    seed_distance_fraction: nucleus seeds (distance-transform peaks) are at least this many
        nucleus diameters apart; lower splits touching nuclei more eagerly.
    distance_sigma_px: Gaussian smoothing of the distance transform, against spurious peaks.
    cytoplasm_sigma_px: Gaussian smoothing of the microtubule + ER signal.
    cell_threshold_method: automatic threshold of the cytoplasm signal (li, otsu or triangle).
    cell_threshold_scale: the automatic threshold is multiplied by this (dim cell edges count).
    closing_radius_px: radius of the disk closing that bridges gaps in the cell mask (at least 1 px).
    nucleus_distance_weight: weight of the distance from the nuclei (in nucleus diameters)
        against the cytoplasm signal (scaled to its 90th percentile) in the cell elevation.
    """

    reference_size: int = 512
    nucleus_diameter_px: float = 45.0
    estimate_nucleus_diameter: bool = True
    nucleus_sigma_px: float = 1.0
    nucleus_threshold_floor: float = 0.05
    min_nucleus_area_fraction: float = 0.1
    seed_distance_fraction: float = 0.8
    distance_sigma_px: float = 2.0
    cytoplasm_sigma_px: float = 2.0
    cell_threshold_method: ThresholdMethod = "li"
    cell_threshold_scale: float = 0.5
    closing_radius_px: float = 3.0
    nucleus_distance_weight: float = 1.0

    def __post_init__(self) -> None:
        positive = ("reference_size", "nucleus_diameter_px", "seed_distance_fraction", "cell_threshold_scale")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"WatershedConfig.{name} must be > 0, got {getattr(self, name)}")
        non_negative = (
            "nucleus_sigma_px",
            "min_nucleus_area_fraction",
            "distance_sigma_px",
            "cytoplasm_sigma_px",
            "closing_radius_px",
            "nucleus_distance_weight",
        )
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ValueError(f"WatershedConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.nucleus_threshold_floor < 1.0:
            raise ValueError(
                f"WatershedConfig.nucleus_threshold_floor must be in [0, 1), got {self.nucleus_threshold_floor}"
            )
        if self.cell_threshold_method not in _THRESHOLDS:
            raise ValueError(
                f"WatershedConfig.cell_threshold_method must be one of {sorted(_THRESHOLDS)}, "
                f"got {self.cell_threshold_method!r}"
            )


@dataclass(frozen=True)
class _Scaled:
    """Pixel lengths of a `WatershedConfig` at one image's size."""

    scale: float
    nucleus_diameter: float

    def px(self, length_at_reference: float) -> float:
        """A length given at the reference size, in this image's pixels."""
        return length_at_reference * self.scale


def _remove_small(labels: np.ndarray, min_area: float) -> np.ndarray:
    """Zero the instances of an `H,W` label image with fewer than `min_area` pixels."""
    areas = np.bincount(labels.ravel())
    small = areas < min_area
    small[0] = False
    if small.any():
        labels = np.where(small[labels], 0, labels)
    return labels


def _disk(radius: float) -> np.ndarray:
    r = max(1, round(radius))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def _estimate_diameter(nucleus_foreground: np.ndarray, expected: float, min_area: float) -> float:
    """Median equivalent diameter of the nucleus blobs, kept within 0.5x-2x of `expected`."""
    blobs, n = ndi.label(nucleus_foreground)
    if n == 0:
        return expected
    areas = np.bincount(blobs.ravel())[1:]
    areas = areas[areas >= min_area]
    if areas.size == 0:
        return expected
    measured = 2.0 * np.sqrt(np.median(areas) / np.pi)
    return float(np.clip(measured, 0.5 * expected, 2.0 * expected))


class WatershedSegmenter:
    """Nucleus-seeded watershed cell segmentation (the classical baseline); see the module doc."""

    name = "watershed"

    def __init__(self, config: WatershedConfig | None = None, qc_config: QCConfig | None = None) -> None:
        self.config = config if config is not None else WatershedConfig()
        self.qc_config = qc_config if qc_config is not None else QCConfig()

    def provenance(self) -> dict[str, object]:
        """Method, settings and library version, JSON-ready."""
        return {
            "segmenter": self.name,
            "config": dataclasses.asdict(self.config),
            "qc": self.qc_config.to_dict(),
            "scikit_image": skimage.__version__,
        }

    def segment_batch(self, images: Sequence[np.ndarray]) -> list[SegmentationResult]:
        """Segment each `4,H,W` uint8 (or uint16) field; one result per image, in order."""
        for index, image in enumerate(images):
            check_field_image(image, f"image {index} of the batch")
        results = []
        start = time.perf_counter()
        for image in images:
            cells, nuclei = self.segment_masks(image)
            results.append(build_result(cells, nuclei, self.qc_config))
        logger.info(
            "watershed segmented %d images (%d cells) in %.2f s",
            len(results),
            sum(r.n_cells for r in results),
            time.perf_counter() - start,
        )
        return results

    def segment_masks(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`(cells, nuclei)` `H,W` int32 label masks of one `4,H,W` field; cell k grew from nucleus k."""
        check_field_image(image, "watershed input")
        cfg = self.config
        scale = min(image.shape[1:]) / cfg.reference_size
        nucleus_foreground, diameter = self._nucleus_foreground(image[NUCLEUS], scale)
        sizes = _Scaled(scale=scale, nucleus_diameter=diameter)
        nuclei = self._split_nuclei(nucleus_foreground, sizes)
        if nuclei.max() == 0:
            logger.debug("no nuclei found in a %dx%d field", *image.shape[1:])
            return np.zeros_like(nuclei), nuclei
        cells = self._grow_cells(image, nuclei, sizes)
        return cells, nuclei

    def _nucleus_foreground(self, channel: np.ndarray, scale: float) -> tuple[np.ndarray, float]:
        """Binary `H,W` nucleus mask (holes filled, specks removed) and the nucleus diameter to use."""
        cfg = self.config
        smooth = ndi.gaussian_filter(normalize_channel(channel), cfg.nucleus_sigma_px * scale)
        threshold = cfg.nucleus_threshold_floor
        if smooth.max() > smooth.min():
            threshold = max(float(filters.threshold_otsu(smooth)), threshold)
        foreground = ndi.binary_fill_holes(smooth > threshold)
        expected = cfg.nucleus_diameter_px * scale
        speck_area = cfg.min_nucleus_area_fraction * np.pi * expected**2 / 4
        diameter = expected
        if cfg.estimate_nucleus_diameter:
            diameter = _estimate_diameter(foreground, expected, speck_area)
        blobs, _ = ndi.label(foreground)
        min_area = cfg.min_nucleus_area_fraction * np.pi * diameter**2 / 4
        return _remove_small(blobs, min_area) > 0, diameter

    def _split_nuclei(self, foreground: np.ndarray, sizes: _Scaled) -> np.ndarray:
        """Nucleus instances: watershed on the smoothed distance transform from its peaks."""
        cfg = self.config
        if not foreground.any():
            return np.zeros(foreground.shape, np.int32)
        distance = ndi.distance_transform_edt(foreground)
        distance = ndi.gaussian_filter(distance, sizes.px(cfg.distance_sigma_px))
        blobs, _ = ndi.label(foreground)
        min_distance = max(1, round(cfg.seed_distance_fraction * sizes.nucleus_diameter))
        peaks = peak_local_max(distance, min_distance=min_distance, labels=blobs, exclude_border=False)
        markers = np.zeros(foreground.shape, np.int32)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1, dtype=np.int32)
        # A blob whose distance map is flat has no peak: seed it as a whole so it is not lost.
        unseeded = np.setdiff1d(np.unique(blobs[foreground]), np.unique(blobs[markers > 0]))
        for offset, blob_id in enumerate(unseeded, start=len(peaks) + 1):
            markers[blobs == blob_id] = offset
        nuclei = watershed(-distance, markers, mask=foreground)
        return relabel_sequential(nuclei.astype(np.int32))[0]

    def _grow_cells(self, image: np.ndarray, nuclei: np.ndarray, sizes: _Scaled) -> np.ndarray:
        """Cells flooded from the nuclei over the cytoplasm foreground; cell k holds nucleus k."""
        cfg = self.config
        signal = cytoplasm_signal(image, sizes.px(cfg.cytoplasm_sigma_px))
        if signal.max() > signal.min():
            threshold = float(_THRESHOLDS[cfg.cell_threshold_method](signal)) * cfg.cell_threshold_scale
            foreground = signal > threshold
        else:
            foreground = np.zeros(signal.shape, bool)
        return flood_cells_from_nuclei(nuclei, foreground, signal, sizes.nucleus_diameter,
                                       sizes.px(cfg.closing_radius_px), cfg.nucleus_distance_weight)


def cytoplasm_signal(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """The mean of the normalised microtubule and ER channels of a `4,H,W` field, Gaussian-smoothed (`H,W`)."""
    signal = (normalize_channel(image[MICROTUBULE]) + normalize_channel(image[ER])) / 2.0
    return ndi.gaussian_filter(signal, sigma_px)


def flood_cells_from_nuclei(nuclei: np.ndarray, foreground: np.ndarray, signal: np.ndarray,
                            nucleus_diameter: float, closing_radius_px: float, nucleus_distance_weight: float,
                            extra_elevation: np.ndarray | None = None) -> np.ndarray:
    """Cells (`H,W` int32) grown by a watershed seeded with the nucleus instances: cell k holds nucleus k.

    The flooded area is `foreground` plus the nuclei, closed with a disk of `closing_radius_px` and hole-filled.
    The elevation rises with the distance from the nuclei (in nucleus diameters, times `nucleus_distance_weight`)
    and falls with the cytoplasm `signal` (scaled to its 90th percentile inside the area), so borders settle in
    the dim gaps between cells; `extra_elevation` (same shape) is added to it. Area no nucleus reaches stays 0.
    """
    foreground = foreground | (nuclei > 0)
    closed = cv2.morphologyEx(foreground.astype(np.uint8), cv2.MORPH_CLOSE, _disk(closing_radius_px))
    foreground = ndi.binary_fill_holes(closed.astype(bool))
    bright = float(np.percentile(signal[foreground], 90)) if foreground.any() else 1.0
    distance = ndi.distance_transform_edt(nuclei == 0) / max(nucleus_diameter, 1e-6)
    elevation = nucleus_distance_weight * distance - signal / max(bright, 1e-6)
    if extra_elevation is not None:
        elevation = elevation + extra_elevation
    return watershed(elevation, nuclei, mask=foreground).astype(np.int32)
