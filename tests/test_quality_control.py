"""Per-cell QC flags on a hand-built scene with one known outcome per cell, plus the result type."""

from __future__ import annotations

import json

import numpy as np
import pytest

from segmentation.quality_control import (
    DEFAULT_EXCLUDE,
    MaskFormatError,
    QCConfig,
    QCFlag,
    cell_qc_table,
    flag_names,
    flags_from_names,
    keep,
    relabel_nuclei_to_cells,
)
from segmentation.result import SegmentationResult, build_result

# Scene of 40x60 px. Rectangles as (rows, cols) half-open ranges.
CELLS = {
    1: ((0, 10), (0, 10)),  # touches the top/left border
    2: ((12, 22), (2, 12)),  # no nucleus
    3: ((12, 14), (14, 16)),  # 4 px, far below the median (100 px)
    4: ((12, 22), (20, 30)),  # shares nucleus C with cell 5
    5: ((12, 22), (30, 40)),
    6: ((25, 35), (20, 40)),  # two nuclei D and E
    7: ((25, 35), (45, 55)),  # clean; 3 stray px of nucleus G (7% of G) do not count
    8: ((1, 10), (20, 30)),  # clean; holds 40 of nucleus H's 44 px
    9: ((1, 10), (30, 40)),  # clean; 4 px of H (9%) do not count, has its own nucleus I
}
NUCLEI = {
    1: [((3, 7), (3, 7))],  # A in cell 1
    2: [((12, 14), (14, 16))],  # B fills cell 3
    3: [((15, 19), (26, 34))],  # C: 16 px in cell 4, 16 px in cell 5
    4: [((27, 31), (22, 26))],  # D in cell 6
    5: [((27, 31), (32, 36))],  # E in cell 6
    6: [((28, 32), (48, 52))],  # F in cell 7
    7: [((25, 35), (55, 59)), ((25, 28), (54, 55))],  # G: 40 px outside, 3 px in cell 7
    8: [((3, 7), (20, 31))],  # H: 40 px in cell 8, 4 px in cell 9
    9: [((3, 7), (34, 38))],  # I in cell 9
}
# cell id: (area, nucleus_area, n_nuclei, flags)
EXPECTED = {
    1: (100, 16, 1, QCFlag.BORDER),
    2: (100, 0, 0, QCFlag.NO_NUCLEUS),
    3: (4, 4, 1, QCFlag.SMALL),
    4: (100, 16, 1, QCFlag.SPLIT_NUCLEUS),
    5: (100, 16, 1, QCFlag.SPLIT_NUCLEUS),
    6: (200, 32, 2, QCFlag.MULTI_NUCLEI),
    7: (100, 19, 1, QCFlag(0)),
    8: (90, 40, 1, QCFlag(0)),
    9: (90, 20, 1, QCFlag(0)),
}


def _paint(shape: tuple[int, int], regions: dict[int, list]) -> np.ndarray:
    mask = np.zeros(shape, np.int32)
    for label, rects in regions.items():
        for (r0, r1), (c0, c1) in rects:
            mask[r0:r1, c0:c1] = label
    return mask


@pytest.fixture()
def scene() -> tuple[np.ndarray, np.ndarray]:
    """(cells, nuclei) `H,W` instance masks of the hand-built scene."""
    cells = _paint((40, 60), {k: [v] for k, v in CELLS.items()})
    nuclei = _paint((40, 60), NUCLEI)
    return cells, nuclei


def test_every_cell_gets_exactly_its_expected_row(scene: tuple[np.ndarray, np.ndarray]) -> None:
    table = cell_qc_table(*scene)
    assert table.cell_id.tolist() == list(EXPECTED)
    assert table.area.tolist() == [v[0] for v in EXPECTED.values()]
    assert table.nucleus_area.tolist() == [v[1] for v in EXPECTED.values()]
    assert table.n_nuclei.tolist() == [v[2] for v in EXPECTED.values()]
    assert table.flags.tolist() == [int(v[3]) for v in EXPECTED.values()]
    assert table.flags_of(6) == QCFlag.MULTI_NUCLEI


def test_table_as_frame_has_flag_names(scene: tuple[np.ndarray, np.ndarray]) -> None:
    frame = cell_qc_table(*scene).to_frame()
    assert frame.columns.tolist() == ["cell_id", "area", "nucleus_area", "n_nuclei", "flags", "flag_names"]
    assert frame["flag_names"].tolist() == [
        "BORDER",
        "NO_NUCLEUS",
        "SMALL",
        "SPLIT_NUCLEUS",
        "SPLIT_NUCLEUS",
        "MULTI_NUCLEI",
        "",
        "",
        "",
    ]


def test_disabled_checks_never_set_their_bits(scene: tuple[np.ndarray, np.ndarray]) -> None:
    table = cell_qc_table(*scene, QCConfig(checks=QCFlag.NO_NUCLEUS | QCFlag.SMALL))
    assert table.flags.tolist() == [0, 2, 4, 0, 0, 0, 0, 0, 0]
    assert table.n_nuclei.tolist() == [1, 0, 1, 1, 1, 2, 1, 1, 1]  # counts do not depend on the checks


def test_wider_border_catches_cells_one_pixel_in(scene: tuple[np.ndarray, np.ndarray]) -> None:
    table = cell_qc_table(*scene, QCConfig(border_width_px=2))
    bordered = table.cell_id[(table.flags & QCFlag.BORDER) > 0].tolist()
    assert bordered == [1, 8, 9]


def test_lower_overlap_fraction_counts_stray_nucleus_pixels(scene: tuple[np.ndarray, np.ndarray]) -> None:
    table = cell_qc_table(*scene, QCConfig(nucleus_min_overlap=0.05))
    flags = dict(zip(table.cell_id.tolist(), table.flags.tolist(), strict=True))
    assert flags[7] == QCFlag.MULTI_NUCLEI  # F plus G's 7%; G lies in no other cell, so not split
    assert flags[8] == QCFlag.SPLIT_NUCLEUS  # H counted in cells 8 and 9
    assert flags[9] == QCFlag.SPLIT_NUCLEUS | QCFlag.MULTI_NUCLEI  # H's 9% plus its own I
    assert table.n_nuclei.tolist() == [1, 0, 1, 1, 1, 2, 2, 1, 2]


def test_small_check_needs_enough_cells_for_a_median() -> None:
    cells = np.zeros((20, 20), np.int32)
    cells[2:12, 2:12] = 1
    cells[14:16, 14:16] = 2
    nuclei = (cells > 0).astype(np.int32) * cells
    assert cell_qc_table(cells, nuclei).flags.tolist() == [0, 0]
    table = cell_qc_table(cells, nuclei, QCConfig(min_cells_for_median=2))
    assert table.flags.tolist() == [0, int(QCFlag.SMALL)]


def test_empty_cell_mask_gives_empty_table() -> None:
    table = cell_qc_table(np.zeros((5, 5), np.uint16), np.ones((5, 5), np.uint16))
    assert len(table) == 0
    assert table.to_frame().shape == (0, 6)


def test_relabel_nuclei_to_cells(scene: tuple[np.ndarray, np.ndarray]) -> None:
    cells, nuclei = scene
    relabelled = relabel_nuclei_to_cells(cells, nuclei)
    assert relabelled.dtype == np.int32
    assert np.unique(relabelled[15:19, 26:30]).tolist() == [4]  # nucleus C's half in cell 4
    assert np.unique(relabelled[15:19, 30:34]).tolist() == [5]  # and its half in cell 5
    assert np.unique(relabelled[27:31, 22:26]).tolist() == [6] == np.unique(relabelled[27:31, 32:36]).tolist()
    assert relabelled[25:35, 55:59].max() == 0  # G outside every cell is dropped
    assert np.count_nonzero(relabelled == 7) == 16 + 3
    assert np.count_nonzero(relabelled == 2) == 0


def test_keep_policy_excludes_fragments_and_cells_without_nucleus(
    scene: tuple[np.ndarray, np.ndarray],
) -> None:
    table = cell_qc_table(*scene)
    assert DEFAULT_EXCLUDE == QCFlag.SMALL | QCFlag.NO_NUCLEUS
    assert table.cell_id[keep(table.flags)].tolist() == [1, 4, 5, 6, 7, 8, 9]
    strict = keep(table.flags, exclude=DEFAULT_EXCLUDE | QCFlag.BORDER | QCFlag.SPLIT_NUCLEUS)
    assert table.cell_id[strict].tolist() == [6, 7, 8, 9]
    assert bool(keep(int(QCFlag.BORDER))) is True
    with pytest.raises(TypeError, match="QC flags must be integers, got dtype float64"):
        keep(np.array([1.0]))


def test_flag_names_round_trip_and_errors() -> None:
    value = QCFlag.BORDER | QCFlag.MULTI_NUCLEI
    assert flag_names(value) == ["BORDER", "MULTI_NUCLEI"]
    assert flag_names(0) == []
    assert flags_from_names(["BORDER", "MULTI_NUCLEI"]) == value
    assert [int(f) for f in QCFlag] == [1, 2, 4, 8, 16]
    with pytest.raises(ValueError, match="QC flag value 33 has bits that are not QCFlag members: 32"):
        flag_names(33)
    with pytest.raises(ValueError, match="unknown QC flag name 'EDGE'"):
        flags_from_names(["EDGE"])


def test_config_validation_and_serialisation() -> None:
    with pytest.raises(ValueError, match=r"QCConfig.small_area_fraction must be in \[0, 1\), got 1.5"):
        QCConfig(small_area_fraction=1.5)
    with pytest.raises(ValueError, match="QCConfig.border_width_px must be >= 1, got 0"):
        QCConfig(border_width_px=0)
    with pytest.raises(ValueError, match=r"QCConfig.nucleus_min_overlap must be in \(0, 1\], got 0.0"):
        QCConfig(nucleus_min_overlap=0.0)
    settings = json.loads(json.dumps(QCConfig(checks=QCFlag.BORDER | QCFlag.SMALL).to_dict()))
    assert settings["checks"] == ["BORDER", "SMALL"]
    assert settings["small_area_fraction"] == 0.25


def test_bad_masks_raise_errors_naming_the_mask() -> None:
    cells = np.zeros((10, 10), np.int32)
    with pytest.raises(
        MaskFormatError, match=r"cell mask has shape \(10, 10\) but nucleus mask has shape \(10, 9\)"
    ):
        cell_qc_table(cells, cells[:, :-1])
    with pytest.raises(
        MaskFormatError, match="nucleus mask: expected integer instance ids, got dtype float32"
    ):
        cell_qc_table(cells, cells.astype(np.float32))
    with pytest.raises(MaskFormatError, match=r"cell mask: expected an H,W label mask, got \(1, 10, 10\)"):
        relabel_nuclei_to_cells(cells[None], cells[None])


def test_build_result_packages_masks_and_qc(scene: tuple[np.ndarray, np.ndarray]) -> None:
    cells, nuclei = scene
    result = build_result(cells.astype(np.uint16), nuclei)
    assert isinstance(result, SegmentationResult)
    assert result.cells.dtype == np.int32 and result.nuclei.dtype == np.int32
    assert result.n_cells == 9
    np.testing.assert_array_equal(result.nuclei, relabel_nuclei_to_cells(cells, nuclei))
    assert result.qc.flags_of(2) == QCFlag.NO_NUCLEUS


def test_result_rejects_inconsistent_parts(scene: tuple[np.ndarray, np.ndarray]) -> None:
    cells, nuclei = scene
    table = cell_qc_table(cells, nuclei)
    with pytest.raises(MaskFormatError, match="must carry the id of the containing cell"):
        SegmentationResult(cells=cells, nuclei=nuclei, qc=table)
    fewer = cells.copy()
    fewer[fewer == 9] = 0
    with pytest.raises(MaskFormatError, match="QC table has 9 rows but the cell mask has 8 cells"):
        SegmentationResult(cells=fewer, nuclei=relabel_nuclei_to_cells(fewer, nuclei), qc=table)
