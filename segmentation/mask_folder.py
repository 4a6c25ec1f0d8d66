"""Use masks made elsewhere instead of segmenting: `{id}_cells.png` and `{id}_nuclei.png` from a folder.

For cell and nucleus instance masks a user already has (HPA-Cell-Segmentation, a Cellpose run in another
environment, hand-corrected masks, `segment.py --export-masks`, or the exact masks of the synthetic generator),
so that the cache, QC, MIL training and maps run on them. Masks may be at the original resolution; they are
resized to the working size with nearest-neighbour (ids are kept). QC is computed exactly as for a segmenter.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hpa_cells.images import read_label_mask, resize_mask
from segmentation.quality_control import QCConfig
from segmentation.result import SegmentationResult, build_result

MASK_SUFFIXES = (".png", ".tif", ".tiff")


class MaskFileError(FileNotFoundError):
    """A mask an image needs is missing, unreadable or of the wrong shape."""


class MaskFolderSegmenter:
    """A `Segmenter` that reads each image's masks from `folder` instead of computing them.

    It needs the image ids (`reads_masks_by_id`), so `segment_folder` calls `segment_batch(images, image_ids)`.
    """

    name = "mask_folder"
    reads_masks_by_id = True

    def __init__(self, folder: Path, qc_config: QCConfig | None = None) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise MaskFileError(f"mask folder {self.folder} does not exist")
        self.qc_config = qc_config

    def mask_path(self, image_id: str, kind: str) -> Path:
        """The existing `{image_id}_{kind}.png|tif|tiff` file; `MaskFileError` naming what was looked for."""
        candidates = [self.folder / f"{image_id}_{kind}{suffix}" for suffix in MASK_SUFFIXES]
        for path in candidates:
            if path.is_file():
                return path
        raise MaskFileError(f"no {kind} mask for image {image_id!r}: looked for "
                            f"{', '.join(p.name for p in candidates)} in {self.folder}")

    def read_masks(self, image_id: str, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Cell and nucleus masks of one image at `shape` (the working size)."""
        masks = []
        for kind in ("cells", "nuclei"):
            path = self.mask_path(image_id, kind)
            mask = read_label_mask(path)
            if mask.shape != shape:
                ratio_h, ratio_w = mask.shape[0] / shape[0], mask.shape[1] / shape[1]
                if abs(ratio_h - ratio_w) > 0.02 * max(ratio_h, ratio_w):
                    raise MaskFileError(f"{path}: mask is {mask.shape[1]}x{mask.shape[0]} px, which does not have "
                                        f"the aspect ratio of its image ({shape[1]}x{shape[0]} px at working size)")
                mask = resize_mask(mask, shape)
            masks.append(mask.astype(np.int32, copy=False))
        return masks[0], masks[1]

    def segment_batch(self, images: Sequence[np.ndarray], image_ids: Sequence[str] | None = None
                      ) -> list[SegmentationResult]:
        if image_ids is None or len(image_ids) != len(images):
            raise ValueError("MaskFolderSegmenter needs one image id per image")
        results = []
        for image, image_id in zip(images, image_ids, strict=True):
            cells, nuclei = self.read_masks(image_id, tuple(image.shape[1:]))
            results.append(build_result(cells, nuclei, self.qc_config))
        return results

    def provenance(self) -> dict[str, object]:
        return {"method": self.name, "mask_folder": str(self.folder.resolve())}
