"""The prediction folder contract: what the writer writes the reader reads back, folders written before a
manifest entry existed still read, and a damaged file gives a PredictionFolderError naming the file and line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from map_fixtures import (
    CELL_BOXES,
    IMAGE_PREDICTED,
    QC_FLAG_NAMES,
    THRESHOLDS,
    PredictionFixture,
    cell_probabilities,
    image_probabilities,
    write_prediction_fixture,
)

from hpa_cells.classes import CLASS_NAMES, NUM_CLASSES
from hpa_cells.predictions import (
    CELL_COLUMNS,
    IMAGE_COLUMNS,
    PredictionFolderError,
    Predictions,
    format_predicted_ids,
    parse_predicted_ids,
    read_prediction_folder,
    write_prediction_folder,
)


@pytest.fixture(scope="module")
def fixture(tmp_path_factory: pytest.TempPathFactory) -> PredictionFixture:
    return write_prediction_fixture(tmp_path_factory.mktemp("run"))


@pytest.fixture()
def copy(fixture: PredictionFixture, tmp_path: Path) -> Path:
    target = tmp_path / "pred"
    shutil.copytree(fixture.pred, target)
    return target


def _edit_manifest(folder: Path, **changes: object) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    for key, value in changes.items():
        if value is None:
            manifest.pop(key, None)
        else:
            manifest[key] = value
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_a_written_folder_reads_back(fixture: PredictionFixture) -> None:
    folder = read_prediction_folder(fixture.pred)
    assert folder.image_ids == list(CELL_BOXES)
    assert list(folder.images["predicted_ids"]) == [IMAGE_PREDICTED[i] for i in CELL_BOXES]
    assert set(IMAGE_COLUMNS) <= set(folder.images.columns)
    np.testing.assert_allclose(folder.images[list(CLASS_NAMES)].to_numpy(),
                               np.stack([image_probabilities(i) for i in CELL_BOXES]), atol=1e-5)
    assert set(CELL_COLUMNS) <= set(folder.cells.columns)
    assert "image_index" not in folder.cells.columns and "scale" not in folder.cells.columns
    assert folder.cells["qc_flag_names"].tolist() == ["", "", "border", "", ""]
    probs = folder.cell_probabilities()
    assert sorted(probs) == ["fieldA", "fieldB"] and sorted(probs["fieldA"]) == [1, 2, 5]
    np.testing.assert_allclose(probs["fieldB"][2], cell_probabilities("fieldB", 2), atol=1e-5)
    assert list(folder.cell_probabilities(["fieldB"])) == ["fieldB"]
    np.testing.assert_array_equal(folder.thresholds, THRESHOLDS)
    assert folder.cell_score == "gated"
    assert folder.cache_path == fixture.cache
    assert folder.model_folders == [str(fixture.pred.parent / "no_model")]
    assert folder.pixel_maps_path is None
    with h5py.File(folder.attention_path) as f:
        attention = f["attention"][:]
    np.testing.assert_allclose(attention[:, 0], folder.cells["attention"].to_numpy(), atol=1e-5)
    submission = pd.read_csv(fixture.pred / "submission.csv", dtype=str, keep_default_na=False)
    assert dict(zip(submission["Id"], submission["Predicted"], strict=True)) == {
        i: format_predicted_ids(IMAGE_PREDICTED[i]) for i in CELL_BOXES}
    assert not [p.name for p in fixture.pred.iterdir() if ".partial" in p.name]


def test_the_writer_returns_every_file_and_refuses_an_incomplete_cell_table(fixture: PredictionFixture,
                                                                            tmp_path: Path) -> None:
    folder = read_prediction_folder(fixture.pred)
    cells = folder.cells.drop(columns=["qc_flag_names"])
    predictions = Predictions(folder.image_ids, folder.images[list(CLASS_NAMES)].to_numpy(), cells,
                              cells[["attention"]].to_numpy(), folder.thresholds, "cell")
    paths = write_prediction_folder(predictions, tmp_path / "again", {"model": "m", "cache": "c.h5"}, QC_FLAG_NAMES)
    assert list(paths)[:3] == ["submission", "images", "cells"] and list(paths)[-1] == "manifest"
    again = read_prediction_folder(tmp_path / "again")
    pd.testing.assert_frame_equal(again.cells, folder.cells)
    assert again.cell_score == "cell" and again.manifest["cell_score_rule"].startswith("each cell's own")
    assert again.manifest["n_cells"] == len(cells) and again.manifest["n_images"] == 2
    bad = Predictions(predictions.image_ids, predictions.image_probs, cells.drop(columns=["attention"]),
                      predictions.cell_attention, predictions.thresholds)
    with pytest.raises(ValueError, match=r"lacks columns \['attention'\]"):
        write_prediction_folder(bad, tmp_path / "bad", {}, QC_FLAG_NAMES)
    assert not (tmp_path / "bad" / "manifest.json").exists()


def test_an_old_folder_reads_with_the_old_defaults(copy: Path) -> None:
    """Folders written before the cell score, ensembles and pixel maps were recorded."""
    _edit_manifest(copy, cell_score=None, cell_score_rule=None, models=None, families=None, pixel_maps=None)
    (copy / "cells.parquet").unlink()
    folder = read_prediction_folder(copy)
    assert folder.cell_score == "cell"
    assert folder.model_folders == [folder.manifest["model"]]
    assert folder.pixel_maps_path is None
    assert len(folder.cells) == 5 and len(folder.images) == 2


def test_a_cut_images_row_names_the_file_and_line(copy: Path) -> None:
    lines = (copy / "images.csv").read_text().splitlines()
    lines[2] = lines[2][: len(lines[2]) // 2]
    (copy / "images.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(PredictionFolderError, match=rf"{copy / 'images.csv'}, line 3: .* not a number"):
        _ = read_prediction_folder(copy).images


def test_a_cut_cells_row_names_the_file_and_line(copy: Path) -> None:
    lines = (copy / "cells.csv").read_text().splitlines()
    (copy / "cells.csv").write_text("\n".join(lines[:4] + [lines[4][:-20]]) + "\n")
    with pytest.raises(PredictionFolderError, match=rf"{copy / 'cells.csv'}, line 5: \w+ is '', not a number"):
        _ = read_prediction_folder(copy).cells


def test_bad_predicted_ids_are_named(copy: Path) -> None:
    table = pd.read_csv(copy / "images.csv", dtype={"image_id": str, "predicted": str}, keep_default_na=False)
    table.loc[1, "predicted"] = "3 x"
    table.to_csv(copy / "images.csv", index=False)
    with pytest.raises(PredictionFolderError, match=r"images.csv, line 3: predicted '3 x' is not space-separated"):
        _ = read_prediction_folder(copy).images
    table.loc[1, "predicted"] = "3 28"
    table.to_csv(copy / "images.csv", index=False)
    with pytest.raises(PredictionFolderError, match=r"line 3: predicted class ids \[28\] are outside 0..27"):
        _ = read_prediction_folder(copy).images
    assert parse_predicted_ids("") == () and parse_predicted_ids("0 25") == (0, 25)


def test_manifest_problems_are_named(copy: Path, tmp_path: Path) -> None:
    _edit_manifest(copy, cell_score="median", thresholds=[0.5] * (NUM_CLASSES - 1))
    folder = read_prediction_folder(copy)
    with pytest.raises(PredictionFolderError, match=r"manifest.json: unknown cell_score 'median'; expected one of"):
        _ = folder.cell_score
    with pytest.raises(PredictionFolderError, match=rf"manifest.json: 'thresholds' must list {NUM_CLASSES} values"):
        _ = folder.thresholds
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(PredictionFolderError, match=r"manifest.json: invalid JSON"):
        _ = read_prediction_folder(copy).manifest
    empty = tmp_path / "empty"
    empty.mkdir()
    for attribute, name in (("images", "images.csv"), ("cells", "cells.csv"), ("manifest", "manifest.json")):
        with pytest.raises(PredictionFolderError, match=f"^{empty} is not a prediction folder: {name} is missing$"):
            getattr(read_prediction_folder(empty), attribute)


def test_missing_columns_are_named(copy: Path) -> None:
    pd.read_csv(copy / "images.csv").drop(columns=["predicted"]).to_csv(copy / "images.csv", index=False)
    with pytest.raises(PredictionFolderError, match=r"images.csv: missing columns \['predicted'\]"):
        _ = read_prediction_folder(copy).images


@pytest.mark.parametrize("cut", [1, 3, 8])
def test_an_images_table_cut_inside_its_last_number_is_refused(copy: Path, cut: int) -> None:
    """Cut inside the last row's last number, the row still parses ('0.10000' -> '0.1'): the missing line end
    tells the cut (issue 16: such a file was accepted)."""
    path = copy / "images.csv"
    path.write_bytes(path.read_bytes()[:-cut])
    with pytest.raises(PredictionFolderError) as caught:
        _ = read_prediction_folder(copy).images
    assert str(caught.value) == (f"{path}, line 3: the file ends mid-row (no line end after the last row: cut while "
                                 "copying or writing?)")


def test_a_table_cut_at_a_row_end_is_refused_by_the_manifest_count(copy: Path) -> None:
    path = copy / "images.csv"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:2]))
    with pytest.raises(PredictionFolderError) as caught:
        _ = read_prediction_folder(copy).images
    assert str(caught.value) == (f"{path}: 1 rows but {copy / 'manifest.json'} records n_images 2 (a cut or "
                                 "replaced file?)")
    cells = copy / "cells.csv"
    cells.write_text("".join(cells.read_text().splitlines(keepends=True)[:-1]))
    with pytest.raises(PredictionFolderError, match=r"cells.csv: 4 rows but .* records n_cells 5"):
        _ = read_prediction_folder(copy).cells


def test_unpredicted_fields_read_back_and_old_folders_have_none(copy: Path) -> None:
    assert read_prediction_folder(copy).unpredicted == {}
    _edit_manifest(copy, unpredicted=[{"image_id": "0007", "reason": "no cells"}])
    assert read_prediction_folder(copy).unpredicted == {"0007": "no cells"}
    _edit_manifest(copy, unpredicted=["0007"])
    with pytest.raises(PredictionFolderError, match="'unpredicted' must list objects with an 'image_id'"):
        _ = read_prediction_folder(copy).unpredicted
