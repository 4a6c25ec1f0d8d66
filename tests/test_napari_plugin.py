"""The napari plugin (`hpa_cells_napari`): the reader's layers, the class widget's colours against cells.csv, the
run widget's prediction folder against the command line's, and one offscreen screenshot of a real field.
Skipped with a reason when napari (the `napari` extra) is not installed."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

napari = pytest.importorskip("napari", reason="napari is not installed: pip install -e '.[napari]' (make setup does)")

from napari_fixtures import predict_with_cli, start_xvfb, train_tiny_model  # noqa: E402

from hpa_cells.classes import CLASS_NAMES  # noqa: E402
from hpa_cells.synthetic.dataset import SyntheticConfig, write_dataset  # noqa: E402
from hpa_cells_napari.colouring import probability_rgba  # noqa: E402
from hpa_cells_napari.field_layers import FEATURE_COLUMNS  # noqa: E402
from hpa_cells_napari.reader import get_reader, read_layers  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
FIELD_PX = 256


@pytest.fixture(scope="module", autouse=True)
def display() -> Iterator[bool]:
    """An X display for the GL canvas (Xvfb, started before the first QApplication); True when there is one."""
    before = os.environ.get("QT_QPA_PLATFORM")
    process = start_xvfb()
    if not os.environ.get("DISPLAY"):
        os.environ["QT_QPA_PLATFORM"] = "offscreen"  # widgets and viewer models need no screen
    yield bool(os.environ.get("DISPLAY"))
    os.environ.pop("QT_QPA_PLATFORM", None) if before is None else os.environ.update(QT_QPA_PLATFORM=before)
    if process is not None:  # Xvfb itself ends with the test process (see start_xvfb)
        os.environ.pop("DISPLAY", None)


@pytest.fixture(scope="module")
def qapp(display: bool):
    from qtpy.QtWidgets import QApplication

    return QApplication.instance() or QApplication([])


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_model(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="module")
def fields(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fields")
    write_dataset(root, 1, SyntheticConfig(seed=5, size=FIELD_PX))
    return root


@pytest.fixture(scope="module")
def prediction(fields: Path, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return predict_with_cli(fields, tmp_path_factory.mktemp("cli") / "out", tiny_model)


def _viewer_with(path: Path):
    from napari.components import ViewerModel

    viewer = ViewerModel()
    for data, kwargs, layer_type in read_layers(path):
        getattr(viewer, f"add_{layer_type}")(data, **kwargs)
    return viewer


def test_reader_opens_channels_cells_and_nuclei_with_the_features_table(prediction: Path, fields: Path) -> None:
    assert get_reader(str(prediction)) is not None and get_reader(str(fields / "nothing")) is None
    viewer = _viewer_with(prediction)
    cells_csv = pd.read_csv(prediction / "cells.csv", dtype={"image_id": str, "qc_flag_names": str},
                            keep_default_na=False)
    image_id = cells_csv["image_id"].iloc[0]
    names = [layer.name for layer in viewer.layers]
    assert names == [f"{image_id} red (microtubules)", f"{image_id} green (protein)", f"{image_id} blue (nucleus)",
                     f"{image_id} yellow (ER)", "cells", "nuclei"]
    for layer, colour in zip(viewer.layers[:4], ("red", "green", "blue", "yellow"), strict=True):
        assert layer.colormap.name == colour and layer.blending == "additive"
        assert layer.data.shape == (FIELD_PX, FIELD_PX) and layer.data.dtype == np.uint8  # original resolution
    cells, nuclei = viewer.layers["cells"], viewer.layers["nuclei"]
    assert cells.data.shape[0] * cells.scale[0] == FIELD_PX  # working size scaled onto the original field
    assert list(cells.features.columns) == list(FEATURE_COLUMNS) and list(nuclei.features.columns) == list(FEATURE_COLUMNS)
    expected = cells_csv[cells_csv["image_id"] == image_id].reset_index(drop=True)
    assert cells.features["index"].tolist() == expected["cell_id"].tolist()
    np.testing.assert_allclose(cells.features[list(CLASS_NAMES)].to_numpy(), expected[list(CLASS_NAMES)].to_numpy())
    assert cells.features["top_label"].tolist() == expected["top_label"].tolist()
    assert set(np.unique(cells.data)) - {0} == set(expected["cell_id"])
    # the maps folder inside the prediction folder, and one field's channel file, open too
    (prediction / "maps" / image_id).mkdir(parents=True, exist_ok=True)
    (prediction / "maps" / "maps_index.csv").write_text("image_id,kind,class_id,path,error\n")
    assert [layer.name for layer in _viewer_with(prediction / "maps").layers] == names
    one_field = _viewer_with(next(fields.glob("*_green.png")))
    assert [layer.name for layer in one_field.layers] == names[:4]


def test_class_widget_colours_cells_by_their_probability_in_cells_csv(prediction: Path, qapp) -> None:
    from hpa_cells_napari.class_widget import ClassWidget

    viewer = _viewer_with(prediction)
    widget = ClassWidget(viewer)
    cells_csv = pd.read_csv(prediction / "cells.csv", dtype={"image_id": str}, keep_default_na=False)
    cells_csv = cells_csv[cells_csv["image_id"] == cells_csv["image_id"].iloc[0]]
    class_id = int(np.argmax(cells_csv[list(CLASS_NAMES)].to_numpy().mean(axis=0)))
    threshold = float(np.median(cells_csv[CLASS_NAMES[class_id]]))
    widget.set_class(class_id, threshold)
    colours = viewer.layers["cells"].colormap.color_dict
    for row in cells_csv.itertuples():
        probability = float(cells_csv.loc[row.Index, CLASS_NAMES[class_id]])
        expected = probability_rgba(probability, widget.threshold, row.qc_flags != 0)
        np.testing.assert_allclose(colours[int(row.cell_id)], expected, atol=1e-6)
    assert {float(colours[int(c)][3]) for c in cells_csv["cell_id"]} >= {1.0}  # some cells above the threshold
    top = cells_csv.iloc[0]
    widget.show_cell(int(top["cell_id"]))
    best = max(CLASS_NAMES, key=lambda name: top[name])
    assert widget.table_rows()[0] == (best, f"{top[best]:.3f}") and len(widget.table_rows()) == 28
    layer = widget.add_probability_layer()
    cells_layer = viewer.layers["cells"]
    inside = cells_layer.data == int(top["cell_id"])
    np.testing.assert_allclose(layer.data[inside], top[CLASS_NAMES[class_id]], rtol=1e-6)
    assert widget.add_pixel_map() is None  # a crop model writes no pixel maps


def _wait_for(worker, qapp, seconds: float = 240) -> None:
    done: list[bool] = []
    worker.finished.connect(lambda: done.append(True))
    deadline = time.time() + seconds
    while not done and time.time() < deadline:
        qapp.processEvents()
        time.sleep(0.02)
    assert done, "the run widget's worker did not finish"


def test_run_widget_writes_the_same_cells_csv_as_predict_py(prediction: Path, fields: Path, tiny_model: Path,
                                                            tmp_path: Path, qapp) -> None:
    from hpa_cells_napari.run_widget import RunWidget

    viewer = _viewer_with(next(fields.glob("*_red.png")))  # four open image layers, no predictions yet
    widget = RunWidget(viewer)
    assert [box.currentText().split()[1] for box in widget.channel_boxes.values()] == ["red", "green", "blue", "yellow"]
    widget.out_edit.setText(str(tmp_path / "gui"))
    widget.model_edit.setText(str(tiny_model))
    widget.segmenter_box.setCurrentText("watershed")
    worker = widget.run()
    _wait_for(worker, qapp)
    assert widget.status.text() == f"done: {tmp_path / 'gui'}", widget.status.text()
    gui = pd.read_csv(tmp_path / "gui" / "cells.csv", dtype={"image_id": str}, keep_default_na=False)
    cli = pd.read_csv(prediction / "cells.csv", dtype={"image_id": str}, keep_default_na=False)
    pd.testing.assert_frame_equal(gui, cli)
    assert [layer.name for layer in viewer.layers][-2:] == ["cells", "nuclei"]
    assert widget.progress.value() == widget.progress.maximum() == 3


@pytest.mark.real
def test_screenshot_of_a_real_field_shows_the_cells_in_their_class_colours(
        real_data: Path, tiny_model: Path, tmp_path: Path, qapp, display: bool) -> None:
    if not display:
        pytest.skip("no X display for napari's OpenGL canvas (install Xvfb: .ci/system-deps)")
    from hpa_cells_napari.class_widget import ClassWidget

    source = real_data / "hpa2018_real58"
    image_id = sorted(p.name[: -len("_red.png")] for p in source.glob("*_red.png"))[0]
    images = tmp_path / "images"
    images.mkdir()
    for path in source.glob(f"{image_id}_*.png"):
        shutil.copy(path, images / path.name)
    prediction = predict_with_cli(images, tmp_path / "out", tiny_model)
    viewer = napari.Viewer(show=True)
    try:
        for data, kwargs, layer_type in read_layers(prediction):
            getattr(viewer, f"add_{layer_type}")(data, **kwargs)
        widget = ClassWidget(viewer)
        viewer.window.add_dock_widget(widget, name="Cell classes")
        viewer.window.resize(1200, 800)
        viewer.reset_view()
        widget.set_class(0, 0.0)
        cells = viewer.layers["cells"]
        cells.opacity = 1.0
        for layer in viewer.layers:
            layer.visible = layer is cells
        shot = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(np.int32)
        white = viewer.add_image(np.ones(cells.data.shape, np.float32), scale=cells.scale, translate=cells.translate,
                                 colormap="gray", contrast_limits=(0, 1))
        cells.visible = False
        field = viewer.screenshot(canvas_only=True, flash=False)[..., :3].min(axis=2) > 250
        white.visible = False
    finally:
        viewer.close()
    # on the black canvas a cell shows its colour times its alpha (QC cells dim grey)
    expected = np.array([c[:3] * c[3] for k, c in cells.colormap.color_dict.items() if k]) * 255
    painted = shot.sum(axis=2) > 0
    distance = np.abs(shot[painted][:, None, :] - expected[None, :, :]).max(axis=2).min(axis=1)
    assert np.quantile(distance, 0.98) <= 3, "painted pixels are not the cells' probability colours"
    cell_fraction = float((cells.data > 0).mean())
    assert cell_fraction > 0.1 and field.sum() > 10_000
    assert abs(painted[field].mean() - cell_fraction) < 0.05  # the cells cover the field as in the mask
    assert not painted[~field].any()  # nothing outside the field
