"""Tests of the synthetic HPA generator: determinism, masks, labels, patterns, files, CLI, balancing,
and that counting green pixels does not reveal a cell's class while the pattern's layout does."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from hpa_cells.classes import CLASS_NAMES, NUM_CLASSES
from hpa_cells.images import read_label_mask, read_sample
from hpa_cells.labels import read_labels
from hpa_cells.synthetic import (
    CELL_COLUMNS,
    DIVIDING_CLASSES,
    PATTERN_GENERATORS,
    REQUIRED_STAGES,
    LabelSetSampler,
    LabelSetTable,
    LabelSetTableError,
    OutputFolderError,
    SyntheticConfig,
    SyntheticGenerator,
    SyntheticSample,
    balanced_probabilities,
    count_label_sets,
    derive_label_set_table,
    expected_prevalence,
    load_real_label_sets,
    read_label_set_table,
    write_dataset,
    write_label_set_table,
)
from hpa_cells.synthetic.anatomy import build_field_anatomy
from hpa_cells.synthetic.patterns import draw_pattern

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def generator_256() -> SyntheticGenerator:
    return SyntheticGenerator(SyntheticConfig(seed=11, size=256))


@pytest.fixture(scope="module")
def mixed_samples(generator_256: SyntheticGenerator) -> list[SyntheticSample]:
    """Images with real label sets, plus forced sets that hold several classes and all mitotic classes."""
    samples = [generator_256.generate(index) for index in range(8)]
    forced = [(15, 16, 17), (0, 25), (2, 21, 22), (7, 19, 23), (1, 11, 14, 16)]
    samples += [generator_256.generate(100 + i, label_set=labels) for i, labels in enumerate(forced)]
    return samples


# --------------------------------------------------------------------------------------------------
# Determinism
# --------------------------------------------------------------------------------------------------


def test_same_seed_gives_identical_arrays_and_image_depends_only_on_seed_and_index() -> None:
    first = SyntheticGenerator(SyntheticConfig(seed=3, size=128))
    second = SyntheticGenerator(SyntheticConfig(seed=3, size=128))
    for index in (0, 1):
        first.generate(index)  # a generator's history must not matter
    a, b = first.generate(4), second.generate(4)
    assert np.array_equal(a.image, b.image)
    assert np.array_equal(a.cell_mask, b.cell_mask)
    assert np.array_equal(a.nucleus_mask, b.nucleus_mask)
    assert a.cells == b.cells and a.labels == b.labels
    assert a.image.shape == (4, 128, 128) and a.image.dtype == np.uint8
    assert a.cell_mask.dtype == np.uint16 and a.nucleus_mask.dtype == np.uint16


def test_different_seed_or_index_gives_different_images() -> None:
    base = SyntheticGenerator(SyntheticConfig(seed=3, size=128)).generate(4)
    other_seed = SyntheticGenerator(SyntheticConfig(seed=4, size=128)).generate(4)
    other_index = SyntheticGenerator(SyntheticConfig(seed=3, size=128)).generate(5)
    for other in (other_seed, other_index):
        assert not np.array_equal(base.image, other.image)
        assert not np.array_equal(base.cell_mask, other.cell_mask)


def test_plan_alone_gives_the_same_truth_as_a_full_generation(generator_256: SyntheticGenerator) -> None:
    sample = generator_256.generate(2)
    plan = generator_256.plan(2)
    assert plan.records() == sample.cells
    assert np.array_equal(plan.layout.cell_mask, sample.cell_mask)


# --------------------------------------------------------------------------------------------------
# Masks and labels
# --------------------------------------------------------------------------------------------------


def test_masks_are_consistent(mixed_samples: list[SyntheticSample]) -> None:
    for sample in mixed_samples:
        cells, nuclei = sample.cell_mask.astype(np.int64), sample.nucleus_mask.astype(np.int64)
        n_cells = len(sample.cells)
        assert [c.cell_id for c in sample.cells] == list(range(1, n_cells + 1))
        # ids are contiguous 1..N and 0 is background
        assert set(np.unique(cells)) == set(range(n_cells + 1)), sample.image_id
        in_nucleus = nuclei > 0
        assert np.array_equal(cells[in_nucleus], nuclei[in_nucleus]), (
            f"{sample.image_id}: nucleus outside its cell"
        )
        areas = np.bincount(cells.ravel(), minlength=n_cells + 1)
        nucleus_areas = np.bincount(nuclei.ravel(), minlength=n_cells + 1)
        for cell in sample.cells:
            assert cell.area == areas[cell.cell_id]
            assert cell.nucleus_area == nucleus_areas[cell.cell_id]
            if not cell.touches_border:
                assert cell.nucleus_area > 0 and cell.n_nuclei >= 1, (
                    f"{sample.image_id} cell {cell.cell_id} lacks a nucleus"
                )
        border_ids = set(np.unique(np.concatenate([cells[0], cells[-1], cells[:, 0], cells[:, -1]]))) - {0}
        assert {c.cell_id for c in sample.cells if c.touches_border} == border_ids
        assert (cells == 0).mean() > 0.02, "some background must remain"


def test_image_label_is_exactly_the_union_of_cell_labels(mixed_samples: list[SyntheticSample]) -> None:
    for sample in mixed_samples:
        union = set().union(*(c.labels for c in sample.cells))
        assert union == set(sample.labels), sample.image_id
        for cell in sample.cells:
            assert list(cell.labels) == sorted(set(cell.labels))
            if set(cell.labels) - set(DIVIDING_CLASSES):
                assert not cell.dividing and cell.stage == "interphase"
            for class_id in set(cell.labels) & set(DIVIDING_CLASSES):
                assert cell.stage in REQUIRED_STAGES[class_id]


def test_cells_vary_within_an_image(mixed_samples: list[SyntheticSample]) -> None:
    """Single-cell variability: across the images, some labels are carried by only part of the cells,
    some cells carry two labels and some carry none."""
    partial = multi = unlabelled = 0
    for sample in mixed_samples:
        for class_id in sample.labels:
            carriers = sum(class_id in c.labels for c in sample.cells)
            partial += int(0 < carriers < sum(not c.dividing and not c.touches_border for c in sample.cells))
        multi += sum(len(c.labels) >= 2 for c in sample.cells)
        unlabelled += sum(not c.labels for c in sample.cells)
    assert partial > 0 and multi > 0 and unlabelled > 0


@pytest.mark.parametrize("class_id", range(NUM_CLASSES), ids=lambda c: f"{c}-{CLASS_NAMES[c]}")
def test_each_class_can_be_generated(generator_256: SyntheticGenerator, class_id: int) -> None:
    sample = generator_256.generate(500 + class_id, label_set=(class_id,))
    assert sample.labels == (class_id,)
    carriers = [c for c in sample.cells if class_id in c.labels]
    assert carriers, f"no cell carries class {class_id}"
    for cell in carriers:
        assert cell.nucleus_area > 0
        if class_id in DIVIDING_CLASSES:
            assert cell.dividing and cell.stage in REQUIRED_STAGES[class_id]
            if class_id == 16:
                assert cell.n_nuclei == 2  # two daughter nuclei joined by the bridge
        else:
            assert not cell.dividing
    green = sample.image[1].astype(np.float64)
    carrier_mask = np.isin(sample.cell_mask, [c.cell_id for c in carriers])
    assert green[carrier_mask].max() > np.percentile(green[sample.cell_mask == 0], 99) + 5


def test_every_class_has_a_documented_generator() -> None:
    assert sorted(PATTERN_GENERATORS) == list(range(NUM_CLASSES))
    for class_id, generator in PATTERN_GENERATORS.items():
        assert generator.__doc__ and generator.__doc__.startswith(f"{class_id} "), generator.__name__


# --------------------------------------------------------------------------------------------------
# Pattern placement
# --------------------------------------------------------------------------------------------------


def _mass_fraction(pattern: np.ndarray, region: np.ndarray) -> float:
    return float(pattern[region].sum() / pattern.sum())


LOCATION_CHECKS = {
    0: ("in the nucleus", lambda cell, anatomy: cell.nucleus, 0.95),
    1: (
        "within 2 px of the nucleus edge",
        lambda cell, a: (cell.nucleus_depth <= 2) & (cell.nucleus_distance <= 2),
        0.85,
    ),
    2: ("on the nucleoli (a fifth of the nucleus)", lambda cell, anatomy: anatomy.nucleoli_map > 0.1, 0.6),
    7: (
        "next to the nucleus",
        lambda cell, anatomy: cell.cytoplasm & (cell.nucleus_distance <= 0.45 * anatomy.radius),
        0.9,
    ),
    13: ("at the cell edge", lambda cell, anatomy: cell.edge_distance <= 7, 0.85),
    19: ("at the centrosome", lambda cell, anatomy: _near_points(cell.shape, anatomy.centrosomes, 3.0), 0.9),
    21: ("within 2 px of the cell boundary", lambda cell, anatomy: cell.edge_distance <= 2, 0.8),
    22: (
        "within 2.5 px of a contact",
        lambda cell, anatomy: _near_points(cell.shape, np.argwhere(cell.contact), 2.5),
        0.8,
    ),
    25: ("outside the nucleus", lambda cell, anatomy: ~cell.nucleus, 0.75),
}


def _near_points(shape: tuple[int, int], points: np.ndarray, radius: float) -> np.ndarray:
    canvas = np.ones(shape, dtype=np.uint8)
    for y, x in np.rint(points).astype(int):
        if 0 <= y < shape[0] and 0 <= x < shape[1]:
            canvas[y, x] = 0
    return cv2.distanceTransform(canvas, cv2.DIST_L2, 5) <= radius


@pytest.mark.parametrize("class_id", sorted(LOCATION_CHECKS), ids=lambda c: f"{c}-{CLASS_NAMES[c]}")
def test_pattern_sits_where_the_class_says(class_id: int) -> None:
    generator = SyntheticGenerator(SyntheticConfig(seed=5, size=384))
    plan = generator.plan(class_id, label_set=(class_id,))
    anatomy = build_field_anatomy(np.random.default_rng(0), plan.layout)
    rng = np.random.default_rng(1)
    where, region_of, minimum = LOCATION_CHECKS[class_id]
    checked = 0
    for index, labels in enumerate(plan.cell_labels):
        if class_id not in labels:
            continue
        cell_anatomy = anatomy.cell(index)
        pattern = draw_pattern(class_id, cell_anatomy, rng)
        fraction = _mass_fraction(pattern, region_of(cell_anatomy.geometry, cell_anatomy))
        assert fraction >= minimum, f"class {class_id}: only {fraction:.2f} of the green {where}"
        checked += 1
    assert checked > 0


def test_nucleoplasm_green_is_mostly_inside_nuclei_in_the_final_image() -> None:
    sample = SyntheticGenerator(SyntheticConfig(seed=8, size=384)).generate(0, label_set=(0,))
    green = sample.image[1].astype(np.float64)
    background = np.median(green[sample.cell_mask == 0])
    carriers = np.isin(sample.cell_mask, [c.cell_id for c in sample.cells if 0 in c.labels])
    signal = np.clip(green - background, 0, None) * carriers
    assert signal[sample.nucleus_mask > 0].sum() / signal.sum() > 0.75


# --------------------------------------------------------------------------------------------------
# "Counting green pixels fails"
# --------------------------------------------------------------------------------------------------


def _per_cell_features(sample: SyntheticSample) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(counting features, layout features, class) for every cell carrying exactly one label.

    Counting features see how much green a cell has (total, mean, spread, fractions of pixels above
    fixed levels, area). Layout features see only where it is, as shares of the cell's green (nucleus,
    nuclear rim, cell boundary, contacts with neighbours, around the nucleus) and how concentrated it is
    (peak / mean, local maxima per area), all independent of brightness.
    """
    green = sample.image[1].astype(np.float64)
    cells = sample.cell_mask.astype(np.int64)
    n = len(sample.cells) + 1
    in_nucleus = sample.nucleus_mask > 0
    kernel = np.ones((3, 3), np.uint8)
    edge = cv2.morphologyEx(sample.cell_mask, cv2.MORPH_GRADIENT, kernel) > 0
    in_cell = cells > 0
    contact = (
        edge
        & in_cell
        & (
            cv2.dilate(sample.cell_mask, kernel)
            != cv2.erode(np.where(in_cell, sample.cell_mask, 65535).astype(np.uint16), kernel)
        )
    )
    edge_distance = cv2.distanceTransform((~edge).astype(np.uint8), cv2.DIST_L2, 5)
    contact_distance = cv2.distanceTransform((~contact).astype(np.uint8), cv2.DIST_L2, 5)
    nucleus_distance = cv2.distanceTransform((~in_nucleus).astype(np.uint8), cv2.DIST_L2, 5)
    nucleus_depth = cv2.distanceTransform(in_nucleus.astype(np.uint8), cv2.DIST_L2, 5)
    smooth = cv2.GaussianBlur(green, (0, 0), 1.0)
    peaks = (smooth == cv2.dilate(smooth, np.ones((5, 5), np.uint8))) & in_cell

    def per_cell(weights: np.ndarray) -> np.ndarray:
        return np.bincount(cells.ravel(), weights=weights.ravel(), minlength=n)

    area = np.maximum(per_cell(np.ones_like(green)), 1)
    total = per_cell(green) + 1e-6
    mean = total / area
    std = np.sqrt(np.maximum(per_cell(green**2) / area - mean**2, 0))
    counting = [np.log1p(total), mean, std, np.log(area)]
    counting += [per_cell((green > t).astype(float)) / area for t in (10, 20, 40, 80, 160, 250)]
    radius = np.sqrt(area / np.pi)[cells]
    peak = np.zeros(n)
    np.maximum.at(peak, cells.ravel(), green.ravel())
    bright_peaks = peaks & (green > 2 * mean[cells])
    layout = [
        per_cell(green * in_nucleus) / total,
        per_cell(green * ((nucleus_depth <= 2) & in_nucleus | (nucleus_distance <= 2) & ~in_nucleus)) / total,
        per_cell(green * (edge_distance <= 2)) / total,
        per_cell(green * (contact_distance <= 2)) / total,
        per_cell(green * (~in_nucleus & (nucleus_distance <= 0.3 * radius))) / total,
        per_cell(green * (edge_distance <= 0.25 * radius)) / total,
        std / (mean + 1e-6),
        peak / (mean + 1e-6),
        per_cell(bright_peaks.astype(float)) / area * 100,
        per_cell(in_nucleus.astype(float)) / area,
    ]
    rows = [c.cell_id for c in sample.cells if len(c.labels) == 1]
    classes = [c.labels[0] for c in sample.cells if len(c.labels) == 1]
    return np.stack(counting, 1)[rows], np.stack(layout, 1)[rows], np.asarray(classes, dtype=int)


def test_green_counting_classifier_fails_while_pattern_layout_succeeds() -> None:
    """Per-cell class from green intensity statistics (total, mean, spread, fractions above fixed
    thresholds, area) must stay near chance (1/28 = 3.6%): macro (balanced) accuracy below 0.25, i.e.
    at least three of four cells of a typical class are misread. A classifier of the same kind that
    sees only *where* the green is (in the nucleus, at the boundary, perinuclear, how spotty) must do
    at least twice as well, so the classes are recoverable from the pattern, not from the amount."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    generator = SyntheticGenerator(SyntheticConfig(seed=21, size=256))
    parts: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {"train": [], "test": []}
    for repeat in range(3):
        for class_id in range(NUM_CLASSES):
            sample = generator.generate(1000 * repeat + class_id, label_set=(class_id,))
            parts["test" if repeat == 2 else "train"].append(_per_cell_features(sample))
    stacked = {name: [np.concatenate([p[k] for p in rows]) for k in range(3)] for name, rows in parts.items()}
    (count_train, spatial_train, y_train), (count_test, spatial_test, y_test) = (
        stacked["train"],
        stacked["test"],
    )
    assert set(y_test) == set(range(NUM_CLASSES))

    def macro_accuracy(x_train: np.ndarray, x_test: np.ndarray) -> float:
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
        model.fit(x_train, y_train)
        return float(balanced_accuracy_score(y_test, model.predict(x_test)))

    counting = macro_accuracy(count_train, count_test)
    layout = macro_accuracy(spatial_train, spatial_test)
    assert counting < 0.25, f"green counting reaches {counting:.2f} macro accuracy"
    assert layout >= max(2 * counting, 0.3), f"pattern layout {layout:.2f} vs counting {counting:.2f}"


# --------------------------------------------------------------------------------------------------
# Label sets
# --------------------------------------------------------------------------------------------------


def test_committed_table_is_well_formed() -> None:
    table = load_real_label_sets()
    assert table.n_images == 31072
    counts = table.class_counts()
    assert counts[0] == 12885 and counts[27] == 11 and counts.min() == 11
    assert list(table.counts) == sorted(table.counts, reverse=True)


@pytest.mark.real
def test_committed_table_equals_derivation_from_real_labels(real_data: Path) -> None:
    derived = derive_label_set_table(real_data / "labels" / "train_2018.csv")
    assert derived == load_real_label_sets()


def test_table_round_trip_and_errors(tmp_path: Path) -> None:
    table = count_label_sets([(0,), (25, 0), (0, 25), (3,), ()])
    assert table.label_sets == ((0, 25), (0,), (3,)) and table.counts == (2, 1, 1)
    path = write_label_set_table(tmp_path / "sets.csv", table)
    assert path.read_text().splitlines() == ["labels,count", "0 25,2", "0,1", "3,1"]
    assert read_label_set_table(path) == table
    bad = tmp_path / "bad.csv"
    bad.write_text("labels,count\n0 25,2\n3 1,4\n")
    with pytest.raises(
        LabelSetTableError, match=r"bad.csv, line 3: labels '3 1' must be sorted unique class ids"
    ):
        read_label_set_table(bad)
    bad.write_text("labels,count\n0,2\n0,3\n")
    with pytest.raises(LabelSetTableError, match=r"line 3: label set \(0,\) repeats line 2"):
        read_label_set_table(bad)


def test_balanced_sampling_lifts_every_class_to_three_percent() -> None:
    table = load_real_label_sets()
    real = expected_prevalence(table, table.frequencies())
    assert real[27] < 0.001 and real.min() < 0.03
    probabilities = balanced_probabilities(table, 0.03)
    assert probabilities.sum() == pytest.approx(1.0)
    balanced = expected_prevalence(table, probabilities)
    assert balanced.min() >= 0.03
    assert balanced.max() < real.max()  # nucleoplasm loses share to the rare classes
    sampler = LabelSetSampler(table, balanced=True)
    rng = np.random.default_rng(0)
    draws = [sampler.sample(rng) for _ in range(20000)]
    empirical = np.zeros(NUM_CLASSES)
    for labels in draws:
        empirical[list(labels)] += 1
    empirical /= len(draws)
    assert empirical.min() > 0.025
    assert np.abs(empirical - balanced).max() < 0.015
    assert set(draws) <= set(table.label_sets)  # only real label sets are drawn


def test_real_sampling_follows_the_table() -> None:
    table = LabelSetTable(label_sets=((0,), (0, 25), (27,)), counts=(6, 3, 1))
    sampler = LabelSetSampler(table)
    rng = np.random.default_rng(1)
    draws = [sampler.sample(rng) for _ in range(5000)]
    assert draws.count((0,)) / 5000 == pytest.approx(0.6, abs=0.03)
    assert draws.count((27,)) / 5000 == pytest.approx(0.1, abs=0.02)


# --------------------------------------------------------------------------------------------------
# Writing and the CLI
# --------------------------------------------------------------------------------------------------


def _load_main():
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    try:
        import make_synthetic
    finally:
        sys.path.pop(0)
    return make_synthetic.main


def test_written_files_round_trip_and_resume(tmp_path: Path) -> None:
    config = SyntheticConfig(seed=2, size=128)
    out = tmp_path / "synthetic"
    summary = write_dataset(out, 3, config)
    assert (summary.n_images, summary.n_written, summary.n_skipped) == (3, 3, 0)
    generator = SyntheticGenerator(config)
    labels = read_labels(out / "train.csv", scheme="2018")
    with (out / "cells.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == CELL_COLUMNS
    for index in range(3):
        sample = generator.generate(index)
        assert np.array_equal(read_sample(out, sample.image_id), sample.image)
        assert np.array_equal(read_label_mask(out / f"{sample.image_id}_cells.png"), sample.cell_mask)
        assert np.array_equal(read_label_mask(out / f"{sample.image_id}_nuclei.png"), sample.nucleus_mask)
        assert labels[sample.image_id] == sample.labels
        mine = [r for r in rows if r["image_id"] == sample.image_id]
        assert [tuple(int(v) for v in r["labels"].split()) for r in mine] == [c.labels for c in sample.cells]
        assert [int(r["area"]) for r in mine] == [c.area for c in sample.cells]
    settings = json.loads((out / "synthetic.json").read_text())
    assert settings["settings"]["seed"] == 2 and settings["n_images"] == 3
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (out / "synth-s2-000001_cells.png").unlink()  # as if the run had died while writing image 1
    resumed = write_dataset(out, 3, config)
    assert (resumed.n_written, resumed.n_skipped) == (1, 2)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_cli_writes_expected_files_and_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main = _load_main()
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    assert main(["--n", "3", "--out", str(serial), "--size", "128", "--seed", "1", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "images: 3 (3 written, 0 already complete), size 128 px, seed 1" in out
    assert "cells:" in out and "images/s" in out and "Rods & rings" in out
    names = sorted(p.name for p in serial.iterdir())
    expected = {
        f"synth-s1-{i:06d}_{part}.png"
        for i in range(3)
        for part in ("red", "green", "blue", "yellow", "cells", "nuclei")
    }
    assert set(names) == expected | {"cells.csv", "train.csv", "synthetic.json"}
    assert (
        main(
            ["--n", "3", "--out", str(parallel), "--size", "128", "--seed", "1", "--quiet", "--workers", "2"]
        )
        == 0
    )
    capsys.readouterr()
    for name in names:  # same seed -> identical bytes, whatever the number of workers
        assert (serial / name).read_bytes() == (parallel / name).read_bytes(), name
    assert main(["--n", "3", "--out", str(serial), "--size", "128", "--seed", "1", "--quiet"]) == 0
    assert "(0 written, 3 already complete)" in capsys.readouterr().out


def test_cli_refuses_foreign_or_mismatched_folders(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main = _load_main()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert main(["--n", "1", "--out", str(foreign), "--size", "128", "--quiet"]) == 1
    assert (
        "holds no synthetic.json, so it is not a synthetic dataset; refusing to write into it"
        in capsys.readouterr().err
    )
    assert (foreign / "notes.txt").read_text() == "mine" and len(list(foreign.iterdir())) == 1
    earlier = tmp_path / "earlier"
    write_dataset(earlier, 1, SyntheticConfig(seed=0, size=128))
    with pytest.raises(OutputFolderError, match=r"other settings \(seed: 0 there, 1 now\)"):
        write_dataset(earlier, 1, SyntheticConfig(seed=1, size=128))


def test_contact_sheet_shows_all_classes(tmp_path: Path) -> None:
    from hpa_cells.synthetic import make_contact_sheet

    path = make_contact_sheet(tmp_path / "sheet.png", seed=0, size=160, tile=48, classes=(0, 16, 27))
    sheet = cv2.imread(str(path))
    assert sheet.shape == (18 + 48 + 2, 7 * (2 * 48 + 2), 3)  # one row of 7 tiles: label band + 2 panels
    assert sheet[18:66, : 2 * 48].max() > 0 and sheet[18:66, 3 * 98 :].max() == 0  # 3 tiles drawn, 4 blank


def test_committed_contact_sheet_exists_and_is_small() -> None:
    path = REPO_ROOT / "docs" / "images" / "synthetic_contact_sheet.png"
    assert path.is_file() and path.stat().st_size < 1_500_000
    assert cv2.imread(str(path)) is not None


# --------------------------------------------------------------------------------------------------
# Appearance presets (issue 13) and the realism statistics
# --------------------------------------------------------------------------------------------------

# sha256 of image + cell mask + nucleus mask bytes of image {index} at seed 7, 128 px, computed on the commit before presets existed (f6cf60a)
# with this project's numpy / OpenCV: the neutral appearance must leave default images byte-identical.
BASE_HASHES = {
    0: "0333a16989908117856dbd8d342d791706cf9eecfc259ead4a590cd069256f00",
    3: "e588395f7467bc8ab5d60a83fc13bcc33b25f7f7542260c83f2984421c2c1110",
}
BASE_DATASET_HASH = "edac01d7ca15bfb46f21cd3790dee10a3e5a01e9ff44e9916422491b0b22fa0d"
"""sha256 over (name, bytes) of every file of `write_dataset(folder, 3, SyntheticConfig(seed=1, size=128))`."""


def _sample_hash(sample: SyntheticSample) -> str:
    import hashlib

    digest = hashlib.sha256()
    for array in (sample.image, sample.cell_mask, sample.nucleus_mask):
        digest.update(array.tobytes())
    return digest.hexdigest()


def test_default_output_is_byte_identical_to_before_presets(tmp_path: Path) -> None:
    import hashlib

    for config in (SyntheticConfig(seed=7, size=128), SyntheticConfig.preset("default", seed=7, size=128)):
        generator = SyntheticGenerator(config)
        for index, expected in BASE_HASHES.items():
            assert _sample_hash(generator.generate(index)) == expected, (config, index)
    write_dataset(tmp_path / "d", 3, SyntheticConfig(seed=1, size=128))
    digest = hashlib.sha256()
    for path in sorted((tmp_path / "d").iterdir()):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    assert digest.hexdigest() == BASE_DATASET_HASH
    assert "appearance" not in json.loads((tmp_path / "d" / "synthetic.json").read_text())["settings"]


def test_hpa2018_preset_exists_is_deterministic_and_changes_the_images() -> None:
    from hpa_cells.synthetic import PRESETS

    config = SyntheticConfig.preset("hpa2018", seed=7, size=128)
    assert config.appearance == PRESETS["hpa2018"] and not config.appearance.is_neutral
    assert config.preset_name == "hpa2018" and SyntheticConfig().preset_name == "default"
    first, again = (SyntheticGenerator(config).generate(3) for _ in range(2))
    assert _sample_hash(first) == _sample_hash(again)
    assert _sample_hash(first) != BASE_HASHES[3]
    default = SyntheticGenerator(SyntheticConfig(seed=7, size=128)).generate(3)
    assert first.labels == default.labels  # the label stream is untouched; only sizes and pixels change
    assert np.median(first.image[2][first.cell_mask == 0]) == 0  # black background, as in real 2018 fields
    with pytest.raises(ValueError, match="unknown synthetic preset 'hpa2019'; known: default, hpa2018"):
        SyntheticConfig.preset("hpa2019")


def test_preset_settings_round_trip_through_synthetic_json(tmp_path: Path) -> None:
    config = SyntheticConfig.preset("hpa2018", seed=3, size=128)
    summary = write_dataset(tmp_path / "p", 2, config)
    document = json.loads((tmp_path / "p" / "synthetic.json").read_text())
    assert document["preset"] == "hpa2018"
    assert SyntheticConfig.from_dict(document["settings"]) == config
    assert summary.n_written == 2 and write_dataset(tmp_path / "p", 2, config).n_skipped == 2
    with pytest.raises(OutputFolderError, match=r"appearance: 'preset hpa2018' there, 'preset default' now"):
        write_dataset(tmp_path / "p", 2, SyntheticConfig(seed=3, size=128))


def test_appearance_rejects_bad_settings() -> None:
    from hpa_cells.synthetic import Appearance

    with pytest.raises(ValueError, match="appearance cell_scale must be > 0, got 0.0"):
        Appearance(cell_scale=0.0)
    with pytest.raises(ValueError, match=r"appearance gain_scale needs 4 values \(red, green, blue, yellow\)"):
        Appearance(gain_scale=(1.0, 1.0))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"stain_gamma needs 3 values > 0"):
        Appearance(stain_gamma=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match=r"unknown appearance settings \['shine'\]"):
        Appearance.from_dict({"shine": 2})


def test_cli_preset_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main = _load_main()
    assert main(["--n", "1", "--out", str(tmp_path / "o"), "--size", "128", "--quiet", "--preset", "hpa2018"]) == 0
    assert "real label sets, preset hpa2018" in capsys.readouterr().out
    assert main(["--n", "1", "--out", str(tmp_path / "x"), "--preset", "nope", "--quiet"]) == 2
    assert "unknown synthetic preset 'nope'" in capsys.readouterr().err


def test_realism_statistics_on_tiny_fields() -> None:
    from hpa_cells.synthetic import realism

    image = np.zeros((4, 1, 5), dtype=np.uint8)
    image[:, 0, :] = [0, 1, 2, 3, 4]
    stats = realism.channel_percentiles(image)
    assert stats["red_p1"] == pytest.approx(0.04) and stats["green_p50"] == 2 and stats["yellow_p99"] == pytest.approx(3.96)
    cells = np.array([[0, 1, 1, 2, 0]])
    medians = realism.region_medians(image, cells)
    assert medians["blue_background"] == 2.0 and medians["blue_cell"] == 2.0  # outside 0, 4; inside 1, 2, 3
    cells = np.array([[1, 1, 0, 0], [1, 1, 0, 2], [0, 0, 0, 2]])
    nuclei = np.array([[1, 0, 0, 0], [0, 0, 0, 2], [0, 0, 0, 0]])
    assert realism.morphology(cells, nuclei) == {"cells": 2.0, "cell_area": 3.0, "coverage": 0.5, "nucleus_area": 1.0}
    one_cell = np.ones((5, 5), dtype=np.int32)
    assert realism.interior(one_cell).sum() == 9  # the 3x3 centre; the border touches the outside
    ramp = np.tile(10.0 + 2.0 * np.arange(5), (5, 1))  # gradient 2 everywhere; mean over columns 1-3 is 14
    assert realism.protein_texture(ramp, one_cell) == pytest.approx(2 / 14)
    green = np.array([[8.0, 2.0], [2.0, 2.0]])
    assert realism.nucleus_cytoplasm_ratio(green, np.ones((2, 2), int), np.array([[1, 0], [0, 0]])) == 4.0
    assert np.isnan(realism.nucleus_cytoplasm_ratio(green, np.ones((2, 2), int), np.zeros((2, 2), int)))


def test_realism_summary_and_gap() -> None:
    from hpa_cells.synthetic import realism

    summary = realism.summarise([{"cells": 1.0}, {"cells": 2.0}, {"cells": 3.0}, {"cells": float("nan")}])
    assert summary["cells"] == pytest.approx({"median": 2.0, "p10": 1.2, "p90": 2.8, "n": 3.0})
    a = {"cells": {"median": 20.0}, "green_p50": {"median": 5.0}}
    b = {"cells": {"median": 10.0}, "green_p50": {"median": 0.0}}
    assert realism.log_ratio_gap(a, b, ["cells", "green_p50"]) == pytest.approx(np.log(2.0))  # 20/10; (5+5)/(0+5)
    with pytest.raises(ValueError, match=r"cell mask shape \(3, 3\) does not match the image's \(1, 5\)"):
        realism.field_statistics(image=np.zeros((4, 1, 5)), cells=np.zeros((3, 3), int), nuclei=None)
