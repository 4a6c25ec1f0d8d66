"""Localization maps: the colour composite, overview and panels drawn from known cells, the OME-TIFF maps read
back the way napari/Fiji read them, and the errors for folders that do not fit together."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from map_fixtures import (
    CELL_BOXES,
    ORIGINAL_HW,
    THRESHOLDS,
    WORKING_HW,
    PredictionFixture,
    cell_probabilities,
    masks_of,
    write_prediction_fixture,
)

from hpa_cells.classes import CLASS_NAMES, NUM_CLASSES
from hpa_cells.composite import CompositeSettings, composite_rgb, stretch_channel
from hpa_cells.images import resize_mask
from hpa_cells.maps import (
    CELLS_TIFF_CHANNELS,
    CLASS_COLOURS,
    QC_GREY,
    SHORT_NAMES,
    MapStyle,
    PredictionFolderError,
    PredictionRun,
    class_colour_table,
    class_id_of,
    colour_lut,
    inner_boundaries,
    paint_overview,
    panel_classes,
    render_attention_panel,
    render_class_panel,
    render_overview,
    write_maps,
)


@pytest.fixture(scope="module")
def fixture(tmp_path_factory: pytest.TempPathFactory) -> PredictionFixture:
    return write_prediction_fixture(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def run(fixture: PredictionFixture) -> PredictionRun:
    with PredictionRun(fixture.pred) as opened:
        yield opened


# ----- composite ----------------------------------------------------------------------------------------


def test_composite_mixes_stretched_channels_additively() -> None:
    image = np.zeros((4, 10, 10), np.uint8)
    image[0, :, :5] = 200  # red left half
    image[3, 5:, :] = 90  # yellow bottom half
    rgb = composite_rgb(image, CompositeSettings(low_percentile=0, high_percentile=100, yellow_weight=0.5))
    assert rgb.shape == (10, 10, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[0, 0], [255, 0, 0])  # red only, stretched to full
    np.testing.assert_array_equal(rgb[9, 9], [128, 128, 0])  # yellow only: half to red and to green
    np.testing.assert_array_equal(rgb[9, 0], [255, 128, 0])  # red + half yellow, clipped
    np.testing.assert_array_equal(rgb[0, 9], [0, 0, 0])
    assert (rgb[:, :, 2] == 0).all()  # flat (empty) nucleus channel stays black


@pytest.mark.parametrize("dtype, top", [(np.uint8, 256), (np.uint16, 4096), (np.float32, 1)])
def test_stretch_uses_the_channels_own_percentiles(dtype: type, top: int) -> None:
    rng = np.random.default_rng(1)
    plane = (rng.random((37, 23)) * top).astype(dtype)
    low, high = np.percentile(plane, (1, 99.8))
    expected = np.clip((plane.astype(np.float64) - low) / (high - low), 0, 1)
    np.testing.assert_allclose(stretch_channel(plane, 1, 99.8), expected, atol=1e-5)


def test_composite_rejects_wrong_shapes_and_settings() -> None:
    with pytest.raises(ValueError, match=r"4,H,W .* got \(3, 5, 5\)"):
        composite_rgb(np.zeros((3, 5, 5), np.uint8))
    with pytest.raises(ValueError, match="0 <= low < high <= 100"):
        CompositeSettings(low_percentile=50, high_percentile=10)


# ----- inputs -------------------------------------------------------------------------------------------


def test_run_reads_the_folder_cache_and_images(run: PredictionRun, fixture: PredictionFixture) -> None:
    assert run.image_ids == ["fieldA", "fieldB"]
    assert run.images_dir == fixture.images
    view = run.field("fieldA")
    assert view.image_chw.shape == (4, *WORKING_HW)
    assert view.original_hw == ORIGINAL_HW["fieldA"]
    np.testing.assert_array_equal(view.cells_hw, masks_of("fieldA")[0])
    assert list(view.cells["cell_id"]) == [1, 2, 5]
    assert view.flagged.tolist() == [False, False, True]
    assert view.predicted == (0, 25)
    np.testing.assert_allclose(view.cells[CLASS_NAMES[3]].to_numpy(),
                               [cell_probabilities("fieldA", c)[3] for c in (1, 2, 5)])


def test_missing_files_and_mismatched_cells_are_named(fixture: PredictionFixture, tmp_path: Path) -> None:
    broken = tmp_path / "pred"
    shutil.copytree(fixture.pred, broken)
    (broken / "cells.csv").unlink()
    with pytest.raises(PredictionFolderError, match=f"{broken} is not a prediction folder: cells.csv is missing"):
        PredictionRun(broken)

    moved = tmp_path / "moved"
    shutil.copytree(fixture.pred, moved)
    manifest = json.loads((moved / "manifest.json").read_text())
    manifest["cache"] = str(tmp_path / "gone.h5")
    (moved / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PredictionFolderError, match="cell cache .*gone.h5 .* not found"):
        PredictionRun(moved)
    with PredictionRun(moved, cache_path=fixture.cache) as reopened:  # the override finds it
        assert reopened.image_ids == ["fieldA", "fieldB"]

    other = tmp_path / "other"
    shutil.copytree(fixture.pred, other)
    cells = (other / "cells.csv").read_text().replace("fieldB,2,", "fieldB,7,")
    (other / "cells.csv").write_text(cells)
    with PredictionRun(other) as mismatched:
        with pytest.raises(PredictionFolderError, match=r"image fieldB: cells \[7\] of cells.csv are not in the cache"):
            mismatched.field("fieldB")


def test_class_ids_from_ids_or_names() -> None:
    assert class_id_of("25") == 25
    assert class_id_of(" cytosol ") == 25
    assert class_id_of("Rods & rings") == 27
    with pytest.raises(ValueError, match="unknown class 'golgi': give an id 0-27 or one of Nucleoplasm"):
        class_id_of("golgi")
    with pytest.raises(ValueError, match="unknown class '28'"):
        class_id_of("28")


def test_palette_is_fixed_distinct_and_short_names_fit() -> None:
    colours = class_colour_table()
    assert colours.shape == (NUM_CLASSES, 3)
    assert len(set(CLASS_COLOURS)) == NUM_CLASSES
    assert all(len(name) <= 10 for name in SHORT_NAMES) and len(SHORT_NAMES) == NUM_CLASSES
    spread = colours.astype(int).max(axis=1) - colours.astype(int).min(axis=1)
    assert spread.min() >= 60  # none of them grey, the colour of QC-flagged cells


# ----- drawings -----------------------------------------------------------------------------------------


def test_overview_tints_normal_cells_and_greys_flagged_ones(run: PredictionRun) -> None:
    view = run.field("fieldA")
    style = MapStyle()
    painted = paint_overview(view, style)
    assert painted.shape == (*WORKING_HW, 3)
    colours = class_colour_table()
    top = {int(c): int(t) for c, t in zip(view.cells["cell_id"], view.cells["top_label_id"], strict=True)}
    edge = inner_boundaries(view.cells_hw)
    for cell_id in (1, 2):  # outlines drawn in the colour of the top location
        ys, xs = np.nonzero(edge & (view.cells_hw == cell_id))
        np.testing.assert_array_equal(painted[ys, xs], np.broadcast_to(colours[top[cell_id]], (len(ys), 3)))
    ys, xs = np.nonzero(edge & (view.cells_hw == 5))
    outline = painted[ys, xs]
    grey = (outline == QC_GREY).all(axis=1)
    assert 0.3 < grey.mean() < 0.7  # dashed: about half the outline
    assert not (outline == colours[top[5]]).all(axis=1).any()

    overview = render_overview(view, style, painted)
    height, width = WORKING_HW
    assert overview.shape[1] == width * style.overview_scale + style.legend_width
    title = overview.shape[0] - height * style.overview_scale
    assert 30 < title < 120
    # the enlarged image sits under the title: a cell's outline pixel keeps its colour at 2x
    y, x = 4, 10  # top edge of cell 1
    np.testing.assert_array_equal(overview[title + 2 * y, 2 * x], colours[top[1]])


def test_class_panel_paints_each_cell_by_its_probability(run: PredictionRun) -> None:
    view = run.field("fieldB")
    style = MapStyle(panel_alpha=1.0)
    panel = render_class_panel(view, 7, style)
    body = panel.shape[0] - WORKING_HW[0]
    lut = colour_lut(style.probability_cmap)
    for cell_id, (y0, y1, x0, x1) in CELL_BOXES["fieldB"].items():
        p = cell_probabilities("fieldB", cell_id)[7]
        y, x = (y0 + y1) // 2, (x0 + x1) // 2  # fieldB has no flagged (hatched) cell
        np.testing.assert_array_equal(panel[body + y, x], lut[int(round(p * 255))])
    background = panel[body + 2, 2]
    assert background[0] == background[1] == background[2]  # outside cells: the grey protein channel
    attention = render_attention_panel(view, style)
    assert attention.shape == panel.shape


def test_panels_for_predicted_then_requested_classes(run: PredictionRun) -> None:
    assert panel_classes(run.field("fieldA"), [3, 0]) == [0, 25, 3]
    assert panel_classes(run.field("fieldB")) == [1]  # none predicted: the most probable class (p 0.45 < 0.5)
    with pytest.raises(ValueError, match="class id 30 out of range 0-27"):
        panel_classes(run.field("fieldB"), [30])


# ----- files --------------------------------------------------------------------------------------------


def test_write_maps_files_and_index(run: PredictionRun, tmp_path: Path) -> None:
    maps = write_maps(run, tmp_path / "maps", extra_classes=[3])
    assert [m.image_id for m in maps] == ["fieldA", "fieldB"]
    folder = tmp_path / "maps" / "fieldA"
    assert sorted(p.name for p in folder.iterdir()) == [
        "attention.png", "cells.ome.tif", "class_00.png", "class_03.png", "class_25.png", "overview.png",
        "probabilities.ome.tif", "thumbnail.png"]
    assert sorted(maps[1].class_panels) == [1, 3]
    with open(tmp_path / "maps" / "maps_index.csv") as handle:
        index = list(csv.DictReader(handle))
    assert len(index) == 8 + 7
    assert {"image_id": "fieldB", "kind": "class_panel", "class_id": "1", "path": "fieldB/class_01.png",
            "error": ""} in index
    assert all((tmp_path / "maps" / row["path"]).is_file() for row in index)


def test_ome_tiff_maps_read_back_like_napari(run: PredictionRun, tmp_path: Path) -> None:
    write_maps(run, tmp_path / "maps", image_ids=["fieldA"])
    folder = tmp_path / "maps" / "fieldA"
    original = ORIGINAL_HW["fieldA"]
    with tifffile.TiffFile(folder / "probabilities.ome.tif") as tif:
        assert tif.is_ome
        probs = tif.asarray()
        names = [c.get("Name") for c in _ome_channels(tif.ome_metadata)]
        assert tif.series[0].axes == "CYX"
    assert names == list(CLASS_NAMES)
    assert probs.shape == (NUM_CLASSES, *original) and probs.dtype == np.uint8
    labels = tifffile.imread(folder / "cells.ome.tif")
    with tifffile.TiffFile(folder / "cells.ome.tif") as tif:
        assert [c.get("Name") for c in _ome_channels(tif.ome_metadata)] == list(CELLS_TIFF_CHANNELS)
    assert labels.shape == (3, *original) and labels.dtype == np.uint16
    cells_big = resize_mask(masks_of("fieldA")[0], original)
    np.testing.assert_array_equal(labels[0], cells_big)
    np.testing.assert_array_equal(labels[1], resize_mask(masks_of("fieldA")[1], original))
    for cell_id in CELL_BOXES["fieldA"]:
        inside = cells_big == cell_id
        expected = np.round(cell_probabilities("fieldA", cell_id) * 255).astype(np.uint8)
        for c in (0, 13, 27):
            assert (probs[c][inside] == expected[c]).all()
        assert (labels[2][inside] == int(np.argmax(cell_probabilities("fieldA", cell_id))) + 1).all()
    assert (probs[:, cells_big == 0] == 0).all() and (labels[2][cells_big == 0] == 0).all()


def _ome_channels(ome_xml: str) -> list[dict[str, str]]:
    """The <Channel> elements' attributes of an OME-XML document."""
    import xml.etree.ElementTree as ElementTree

    root = ElementTree.fromstring(ome_xml)
    return [dict(el.attrib) for el in root.iter() if el.tag.endswith("}Channel")]


def test_thresholds_come_from_the_manifest(run: PredictionRun) -> None:
    np.testing.assert_array_equal(run.thresholds, THRESHOLDS)


# ----- pixels from the cache (issue 16) ----------------------------------------------------------------


def _schema_1_copy(fixture: PredictionFixture, root: Path, images: Path) -> Path:
    """A copy of the fixture's prediction folder whose cache is schema 1 (no stored pixels) reading `images`."""
    import h5py

    from hpa_cells.images import read_sample

    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(fixture.images, images)
    cache = Path(shutil.copy(fixture.cache, root / "old.h5"))
    with h5py.File(cache, "r+") as f:
        del f["image_pixels"]
        f.attrs["schema_version"] = 1
        parameters = json.loads(f.attrs["parameters_json"])
        f.attrs["parameters_json"] = json.dumps({**parameters, "images_dir": str(images)}, sort_keys=True)
    pred = shutil.copytree(fixture.pred, root / "pred")
    manifest = json.loads((pred / "manifest.json").read_text())
    (pred / "manifest.json").write_text(json.dumps({**manifest, "cache": str(cache)}))
    assert read_sample(images, "fieldA", size=WORKING_HW).shape == (4, *WORKING_HW)
    return pred


def _same_maps(first: Path, second: Path) -> None:
    """Every file of two maps folders equal: PNGs and the index byte for byte, OME-TIFFs pixel for pixel (their
    metadata holds a per-file UUID)."""
    names = sorted(p.relative_to(first).as_posix() for p in first.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(second).as_posix() for p in second.rglob("*") if p.is_file())
    for name in names:
        if name.endswith(".tif"):
            np.testing.assert_array_equal(tifffile.imread(first / name), tifffile.imread(second / name), name)
        else:
            assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_maps_need_no_input_files_and_match_the_maps_drawn_from_the_files(fixture: PredictionFixture,
                                                                          tmp_path: Path) -> None:
    """Issue 16: one input file deleted after segmenting stopped the maps with a traceback. A schema-2 cache
    stores the pixels as segmented; maps drawn from them equal the maps drawn from the files at working size."""
    from hpa_cells.images import read_sample

    old_pred = _schema_1_copy(fixture, tmp_path / "old", tmp_path / "old_images")
    with PredictionRun(old_pred) as from_files:
        write_maps(from_files, tmp_path / "from_files")
    pred = shutil.copytree(fixture.pred, tmp_path / "pred")
    images = fixture.images
    with PredictionRun(pred) as run:
        for image_id in run.image_ids:
            np.testing.assert_array_equal(run.field(image_id).image_chw, read_sample(images, image_id, size=WORKING_HW))
    moved = tmp_path / "moved_images"
    shutil.copytree(images, moved)
    shutil.rmtree(images)
    try:
        with PredictionRun(pred) as run:
            drawn = write_maps(run, tmp_path / "from_cache")
        assert drawn.failures == {} and [m.image_id for m in drawn] == ["fieldA", "fieldB"]
        _same_maps(tmp_path / "from_cache", tmp_path / "from_files")
    finally:
        shutil.copytree(moved, images)


def test_a_schema_1_cache_with_a_missing_file_names_it_and_draws_the_others(fixture: PredictionFixture,
                                                                            tmp_path: Path) -> None:
    images = tmp_path / "images"
    pred = _schema_1_copy(fixture, tmp_path / "old", images)
    (images / "fieldA_green.png").unlink()
    with PredictionRun(pred) as run:
        drawn = write_maps(run, tmp_path / "maps")
    message = (f"image fieldA: sample fieldA: missing channel 'green' (looked for fieldA_green.png/.jpg/.jpeg/.tif/"
               f".tiff in {images}) (a schema_version 1 cache stores no pixels, so its maps read the input files)")
    assert [m.image_id for m in drawn] == ["fieldB"] and drawn.failures == {"fieldA": message}
    with open(tmp_path / "maps" / "maps_index.csv") as handle:
        index = list(csv.DictReader(handle))
    assert index[-1] == {"image_id": "fieldA", "kind": "error", "class_id": "", "path": "", "error": message}
    assert not (tmp_path / "maps" / "fieldA").exists() and (tmp_path / "maps" / "fieldB" / "overview.png").is_file()


def test_make_maps_prints_the_images_it_could_not_draw(fixture: PredictionFixture, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    import hpa_cells_cli.maps as make_maps

    images = tmp_path / "images"
    pred = _schema_1_copy(fixture, tmp_path / "old", images)
    (images / "fieldB_red.png").unlink()
    assert make_maps.main(["--pred", str(pred), "--maps", str(tmp_path / "maps"), "--report",
                           str(tmp_path / "report")]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("Drew maps of 1 images in ")
    assert printed[2:] == [f"  1 images could not be drawn (kind 'error' in {tmp_path / 'maps' / 'maps_index.csv'}):",
                           "    image fieldB: sample fieldB: missing channel 'red' (looked for fieldB_red.png/.jpg/"
                           f".jpeg/.tif/.tiff in {images}) (a schema_version 1 cache stores no pixels, so its maps "
                           "read the input files)"]
    assert (tmp_path / "report" / "index.html").is_file()


def test_a_schema_1_cache_without_its_images_folder_says_how_to_pass_it(fixture: PredictionFixture,
                                                                        tmp_path: Path) -> None:
    images = tmp_path / "images"
    pred = _schema_1_copy(fixture, tmp_path / "old", images)
    shutil.rmtree(images)
    with pytest.raises(PredictionFolderError) as caught:
        PredictionRun(pred)
    assert str(caught.value) == (
        f"input images folder {images} (recorded in {tmp_path / 'old' / 'old.h5'}) not found; this schema_version 1 "
        "cache stores no pixels, so the maps read the input files: pass the folder's new location "
        "(scripts/make_maps.py --images DIR), or segment again for a cache that stores them")


def test_the_report_index_lists_the_images_whose_maps_could_not_be_drawn(fixture: PredictionFixture,
                                                                          tmp_path: Path) -> None:
    from markupsafe import escape

    import hpa_cells_cli.maps as make_maps

    images = tmp_path / "images"
    pred = _schema_1_copy(fixture, tmp_path / "old", images)
    (images / "fieldB_red.png").unlink()
    assert make_maps.main(["--pred", str(pred), "--report", str(tmp_path / "report")]) == 0
    page = (tmp_path / "report" / "index.html").read_text()
    message = (f"image fieldB: sample fieldB: missing channel 'red' (looked for fieldB_red.png/.jpg/.jpeg/.tif/.tiff "
               f"in {images}) (a schema_version 1 cache stores no pixels, so its maps read the input files)")
    assert "Images whose maps could not be drawn (1)</h2>" in page
    assert f"<li><code>fieldB</code>: {escape(message)}</li>" in page
    assert "Images (1)</h2>" in page and not (tmp_path / "report" / "images" / "fieldB.html").exists()
    assert make_maps.main(["--pred", str(fixture.pred), "--report", str(tmp_path / "complete")]) == 0
    assert "could not be drawn" not in (tmp_path / "complete" / "index.html").read_text()
