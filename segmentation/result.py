"""The result type every segmenter returns, and the protocol segmenters follow.

Any segmenter (Cellpose, the watershed baseline) turns `4,H,W` field images into cell and
nucleus label masks plus per-cell QC; downstream code (the cell cache, reports) only sees
`SegmentationResult` and `Segmenter`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from segmentation.quality_control import (
    CellQCTable,
    MaskFormatError,
    QCConfig,
    cell_qc_table,
    check_label_mask,
    relabel_nuclei_to_cells,
)


@dataclass(frozen=True)
class SegmentationResult:
    """Cell and nucleus label masks of one field, with a QC row per cell.

    cells: `H,W` int32, 0 = background, 1..N one id per cell.
    nuclei: `H,W` int32, each nucleus pixel carries the id of the cell it lies in (nucleus pixels
        outside every cell are background), so `nuclei == k` is cell k's nucleus region.
    qc: one row per cell id in `cells`, computed on the independent nucleus instances before
        they were relabelled (so split and multiple nuclei are recorded there).
    """

    cells: np.ndarray
    nuclei: np.ndarray
    qc: CellQCTable

    def __post_init__(self) -> None:
        check_label_mask(self.cells, "SegmentationResult.cells")
        check_label_mask(self.nuclei, "SegmentationResult.nuclei")
        if self.cells.shape != self.nuclei.shape:
            raise MaskFormatError(
                f"SegmentationResult: cells have shape {self.cells.shape} but nuclei {self.nuclei.shape}"
            )
        inside = self.nuclei > 0
        if np.any(self.nuclei[inside] != self.cells[inside]):
            raise MaskFormatError(
                "SegmentationResult.nuclei must carry the id of the containing cell "
                "(use quality_control.relabel_nuclei_to_cells)"
            )
        cell_ids = np.unique(self.cells[self.cells > 0])
        if not np.array_equal(cell_ids, self.qc.cell_id):
            raise MaskFormatError(
                f"SegmentationResult: QC table has {len(self.qc)} rows but the cell mask has {cell_ids.size} cells "
                "with different ids"
            )

    @property
    def n_cells(self) -> int:
        """Number of cells (QC rows)."""
        return len(self.qc)


def build_result(
    cells: np.ndarray, nuclei: np.ndarray, qc_config: QCConfig | None = None
) -> SegmentationResult:
    """Run QC on `H,W` cell and independent nucleus instance masks and package them as a result."""
    qc = cell_qc_table(cells, nuclei, qc_config)
    return SegmentationResult(
        cells=cells.astype(np.int32, copy=False),
        nuclei=relabel_nuclei_to_cells(cells, nuclei),
        qc=qc,
    )


@runtime_checkable
class Segmenter(Protocol):
    """Anything that segments a batch of `4,H,W` uint8 fields (channel order red, green, blue, yellow)."""

    name: str

    def segment_batch(self, images: Sequence[np.ndarray]) -> list[SegmentationResult]:
        """One `SegmentationResult` per image, in order; masks have each image's `H,W`."""
        ...

    def provenance(self) -> dict[str, object]:
        """JSON-ready description of the method and settings, stored with the cached cells."""
        ...
