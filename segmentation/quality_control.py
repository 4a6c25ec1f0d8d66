"""Per-cell quality control after segmentation, recorded as bit flags instead of dropping cells.

Every segmented cell is kept in the cache together with an integer `QCFlag` value (and its flag
names); whether a flagged cell is used for training is decided later by `keep`. The flags, their bits,
their names and the default exclusion (`DEFAULT_EXCLUDE`: `SMALL` and `NO_NUCLEUS`) are defined once in
`hpa_cells.qc_flags` (re-exported here, with the table of what each flag means); this module computes them.

A nucleus "counts as inside" a cell when at least `QCConfig.nucleus_min_overlap` of its pixels lie
in that cell, so a few stray boundary pixels neither create a nucleus nor split one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from hpa_cells.qc_flags import ALL_CHECKS, DEFAULT_EXCLUDE, QCFlag, flag_names, flags_from_names

__all__ = [
    "ALL_CHECKS",
    "DEFAULT_EXCLUDE",
    "CellQCTable",
    "MaskFormatError",
    "QCConfig",
    "QCFlag",
    "cell_qc_table",
    "check_label_mask",
    "flag_names",
    "flags_from_names",
    "keep",
    "relabel_nuclei_to_cells",
]

logger = logging.getLogger(__name__)


class MaskFormatError(ValueError):
    """A cell or nucleus label mask does not have the expected shape, type or ids."""


@dataclass(frozen=True)
class QCConfig:
    """Which checks run and their parameters.

    checks: the `QCFlag` bits to compute; bits left out are never set.
    border_width_px: a cell touches the border when it has a pixel within this many pixels of an edge.
    small_area_fraction: a cell is `SMALL` when its area is below this fraction of the image's
        median cell area (images with fewer than `min_cells_for_median` cells are not checked,
        since a median over one or two cells says little).
    nucleus_min_overlap: fraction of a nucleus's pixels that must lie in a cell for it to count
        as inside that cell.
    """

    checks: QCFlag = ALL_CHECKS
    border_width_px: int = 1
    small_area_fraction: float = 0.25
    min_cells_for_median: int = 3
    nucleus_min_overlap: float = 0.1

    def __post_init__(self) -> None:
        if int(self.checks) & ~int(ALL_CHECKS) or int(self.checks) < 0:
            raise ValueError(f"QCConfig.checks={int(self.checks)} has bits that are not QCFlag members")
        if self.border_width_px < 1:
            raise ValueError(f"QCConfig.border_width_px must be >= 1, got {self.border_width_px}")
        if not 0.0 <= self.small_area_fraction < 1.0:
            raise ValueError(
                f"QCConfig.small_area_fraction must be in [0, 1), got {self.small_area_fraction}"
            )
        if self.min_cells_for_median < 1:
            raise ValueError(f"QCConfig.min_cells_for_median must be >= 1, got {self.min_cells_for_median}")
        if not 0.0 < self.nucleus_min_overlap <= 1.0:
            raise ValueError(
                f"QCConfig.nucleus_min_overlap must be in (0, 1], got {self.nucleus_min_overlap}"
            )

    def to_dict(self) -> dict[str, object]:
        """JSON-ready settings (checks as flag names) for provenance records."""
        return {
            "checks": flag_names(self.checks),
            "border_width_px": self.border_width_px,
            "small_area_fraction": self.small_area_fraction,
            "min_cells_for_median": self.min_cells_for_median,
            "nucleus_min_overlap": self.nucleus_min_overlap,
        }


@dataclass(frozen=True)
class CellQCTable:
    """One row per cell, sorted by cell id; all arrays have length N (the number of cells).

    nucleus_area counts every nucleus pixel inside the cell; n_nuclei counts the nuclei that count
    as inside it (see `QCConfig.nucleus_min_overlap`); flags holds the `QCFlag` integer.
    """

    cell_id: np.ndarray  # (N,) int32
    area: np.ndarray  # (N,) int64, pixels
    nucleus_area: np.ndarray  # (N,) int64, pixels
    n_nuclei: np.ndarray  # (N,) int32
    flags: np.ndarray  # (N,) int32, QCFlag values

    def __len__(self) -> int:
        return int(self.cell_id.size)

    def flags_of(self, cell_id: int) -> QCFlag:
        """The flags of one cell, by id."""
        index = np.searchsorted(self.cell_id, cell_id)
        if index >= self.cell_id.size or self.cell_id[index] != cell_id:
            raise KeyError(f"cell id {cell_id} is not in this QC table ({len(self)} cells)")
        return QCFlag(int(self.flags[index]))

    def to_frame(self) -> pd.DataFrame:
        """The table as a DataFrame, with a `flag_names` column (`|`-joined, '' for clean cells)."""
        return pd.DataFrame(
            {
                "cell_id": self.cell_id,
                "area": self.area,
                "nucleus_area": self.nucleus_area,
                "n_nuclei": self.n_nuclei,
                "flags": self.flags,
                "flag_names": ["|".join(flag_names(f)) for f in self.flags],
            }
        )


def check_label_mask(mask: np.ndarray, what: str) -> None:
    """Raise `MaskFormatError` naming `what` unless `mask` is an `H,W` non-negative integer mask."""
    if not isinstance(mask, np.ndarray) or mask.ndim != 2:
        shape = getattr(mask, "shape", type(mask).__name__)
        raise MaskFormatError(f"{what}: expected an H,W label mask, got {shape}")
    if not np.issubdtype(mask.dtype, np.integer):
        raise MaskFormatError(f"{what}: expected integer instance ids, got dtype {mask.dtype}")
    if mask.size and mask.min() < 0:
        raise MaskFormatError(f"{what}: instance ids must be >= 0, found {mask.min()}")


def _check_pair(cells: np.ndarray, nuclei: np.ndarray) -> None:
    check_label_mask(cells, "cell mask")
    check_label_mask(nuclei, "nucleus mask")
    if cells.shape != nuclei.shape:
        raise MaskFormatError(f"cell mask has shape {cells.shape} but nucleus mask has shape {nuclei.shape}")


def _count_ids(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct non-negative ids in `values` and how often each occurs (bincount when ids are dense)."""
    values = values.ravel()
    if values.size == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty
    largest = int(values.max())
    if largest <= 4 * values.size + 1024:
        counts = np.bincount(values, minlength=largest + 1)
        ids = np.flatnonzero(counts)
        return ids.astype(np.int64), counts[ids].astype(np.int64)
    ids, counts = np.unique(values, return_counts=True)
    return ids.astype(np.int64), counts.astype(np.int64)


def _overlaps(cells: np.ndarray, nuclei: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cell id, nucleus id, pixel count) of every overlapping cell/nucleus pair, both ids > 0."""
    inside = (cells > 0) & (nuclei > 0)
    cell_values = cells[inside].astype(np.int64)
    nucleus_values = nuclei[inside].astype(np.int64)
    if cell_values.size == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    stride = int(nucleus_values.max()) + 1  # ids are below 2**32, so the key fits in int64
    keys, counts = _count_ids(cell_values * stride + nucleus_values)
    return keys // stride, keys % stride, counts


def cell_qc_table(cells: np.ndarray, nuclei: np.ndarray, config: QCConfig | None = None) -> CellQCTable:
    """QC table for the cells of one `H,W` cell mask given an independent `H,W` nucleus instance mask.

    `nuclei` must hold one id per nucleus (not yet relabelled to cell ids), otherwise split and
    multiple nuclei cannot be told apart.
    """
    config = config if config is not None else QCConfig()
    _check_pair(cells, nuclei)
    cell_ids, cell_area = _count_ids(cells.astype(np.int64, copy=False))
    if cell_ids.size and cell_ids[0] == 0:
        cell_ids, cell_area = cell_ids[1:], cell_area[1:]
    n_cells = cell_ids.size
    flags = np.zeros(n_cells, np.int32)
    nucleus_area = np.zeros(n_cells, np.int64)
    n_nuclei = np.zeros(n_cells, np.int32)
    if n_cells == 0:
        return CellQCTable(
            cell_ids.astype(np.int32), cell_area.astype(np.int64), nucleus_area, n_nuclei, flags
        )

    pair_cell, pair_nucleus, pair_count = _overlaps(cells, nuclei)
    nucleus_ids, nucleus_total = _count_ids(nuclei[nuclei > 0].astype(np.int64))
    total_of_pair = nucleus_total[np.searchsorted(nucleus_ids, pair_nucleus)]
    counted = pair_count >= config.nucleus_min_overlap * total_of_pair
    cell_index = np.searchsorted(cell_ids, pair_cell)
    np.add.at(nucleus_area, cell_index, pair_count)
    np.add.at(n_nuclei, cell_index[counted], 1)
    # A nucleus counted inside 2+ cells is split; every cell that counts it gets the flag.
    counted_nuclei, cells_per_nucleus = np.unique(pair_nucleus[counted], return_counts=True)
    split_nuclei = counted_nuclei[cells_per_nucleus >= 2]
    has_split = np.zeros(n_cells, bool)
    has_split[cell_index[counted & np.isin(pair_nucleus, split_nuclei)]] = True

    if config.checks & QCFlag.BORDER:
        w = config.border_width_px
        rim = np.concatenate(
            [cells[:w].ravel(), cells[-w:].ravel(), cells[:, :w].ravel(), cells[:, -w:].ravel()]
        )
        flags[np.isin(cell_ids, rim)] |= QCFlag.BORDER
    if config.checks & QCFlag.NO_NUCLEUS:
        flags[n_nuclei == 0] |= QCFlag.NO_NUCLEUS
    if config.checks & QCFlag.SMALL and n_cells >= config.min_cells_for_median:
        flags[cell_area < config.small_area_fraction * np.median(cell_area)] |= QCFlag.SMALL
    if config.checks & QCFlag.SPLIT_NUCLEUS:
        flags[has_split] |= QCFlag.SPLIT_NUCLEUS
    if config.checks & QCFlag.MULTI_NUCLEI:
        flags[n_nuclei >= 2] |= QCFlag.MULTI_NUCLEI
    logger.debug(
        "QC of %d cells: %d flagged (%d excluded by default)",
        n_cells,
        int(np.count_nonzero(flags)),
        int(np.count_nonzero(flags & int(DEFAULT_EXCLUDE))),
    )
    return CellQCTable(
        cell_id=cell_ids.astype(np.int32),
        area=cell_area.astype(np.int64),
        nucleus_area=nucleus_area,
        n_nuclei=n_nuclei,
        flags=flags,
    )


def relabel_nuclei_to_cells(cells: np.ndarray, nuclei: np.ndarray) -> np.ndarray:
    """`H,W` int32 nucleus mask where each nucleus pixel carries the id of the cell it lies in.

    Nucleus pixels outside every cell become background, so a nucleus split across two cells
    becomes two pieces and two nuclei in one cell share its id.
    """
    _check_pair(cells, nuclei)
    return np.where(nuclei > 0, cells, 0).astype(np.int32)


def keep(flags: np.ndarray | int, exclude: QCFlag = DEFAULT_EXCLUDE) -> np.ndarray:
    """Boolean mask (same shape as `flags`) of the cells to use for training: none of `exclude` set."""
    values = np.asarray(flags)
    if not np.issubdtype(values.dtype, np.integer):
        raise TypeError(f"QC flags must be integers, got dtype {values.dtype}")
    return (values & int(exclude)) == 0
