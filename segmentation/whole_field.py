"""No segmentation: every field is one instance covering the whole image.

This is the image-level (2018 Kaggle-style) baseline expressed in the project's own pipeline: the cache then
holds one "cell" per image (the whole field, shrunk to the crop size), so the same encoders, training loop,
thresholds and prediction files give an image classifier that never sees cells. Its per-"cell" output is the
image's; to score it per cell, give every cell of the image the image's probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from segmentation.quality_control import QCConfig
from segmentation.result import SegmentationResult, build_result


class WholeFieldSegmenter:
    """A `Segmenter` whose only cell is the whole field (its nucleus too, so QC flags nothing but the border)."""

    name = "whole_field"

    def __init__(self, qc_config: QCConfig | None = None) -> None:
        self.qc_config = qc_config

    def segment_batch(self, images: Sequence[np.ndarray]) -> list[SegmentationResult]:
        results = []
        for image in images:
            whole = np.ones(image.shape[1:], dtype=np.int32)
            results.append(build_result(whole, whole.copy(), self.qc_config))
        return results

    def provenance(self) -> dict[str, object]:
        return {"method": self.name}
