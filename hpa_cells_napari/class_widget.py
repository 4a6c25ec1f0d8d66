"""The "Cell classes" dock widget: pick a class and colour every cell of the field by its probability (threshold
slider, QC cells dimmed; rules in `hpa_cells_napari.colouring`), the selected cell's 28 probabilities (click a
cell), and on demand the class's probability image layer or, for a dense model, its pixel map.

It works on the newest `cells` Labels layer opened by this plugin (found by its metadata); the probabilities are
that layer's features table, i.e. cells.csv's. napari and Qt are imported here only (napari loads this module)."""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSlider,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from hpa_cells.classes import CLASS_NAMES, NUM_CLASSES
from hpa_cells.predictions import read_prediction_folder
from hpa_cells_napari.colouring import cell_probability_rows, probability_colours
from hpa_cells_napari.field_layers import METADATA_KEY, FieldData, pixel_map_layer, probability_layer

DEFAULT_THRESHOLD = 0.5


def layer_kind(layer) -> str | None:
    """The `kind` this plugin recorded in a layer's metadata (None for other layers)."""
    return (layer.metadata.get(METADATA_KEY) or {}).get("kind")


def field_of_cells_layer(layer) -> FieldData:
    """The field behind a cells layer (masks, features, scale, prediction folder) for the on-demand layers."""
    meta = layer.metadata[METADATA_KEY]
    folder = meta.get("prediction_folder")
    scale_y, scale_x = (float(v) for v in layer.scale)
    cells_hw = np.asarray(layer.data)
    original_hw = (round(cells_hw.shape[0] * scale_y), round(cells_hw.shape[1] * scale_x))
    pixel_maps = read_prediction_folder(folder).pixel_maps_path if folder else None
    return FieldData(meta["image_id"], np.zeros((4, 0, 0), np.uint8), (1.0, 1.0), original_hw,
                     folder, cells_hw, None, layer.features, pixel_maps)


class ClassWidget(QWidget):
    """Colour cells by one class's probability; show a clicked cell's probabilities; add class layers."""

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self._layer = None
        self.class_box = QComboBox()
        self.class_box.addItems([f"{i} {name}" for i, name in enumerate(CLASS_NAMES)])
        self.threshold_slider = QSlider(Qt.Orientation.Horizontal)
        self.threshold_slider.setRange(0, 100)
        self.threshold_slider.setValue(round(DEFAULT_THRESHOLD * 100))
        self.threshold_label = QLabel()
        self.probability_button = QPushButton("Add probability layer")
        self.pixel_map_button = QPushButton("Add pixel map (dense models)")
        self.cell_label = QLabel("Click a cell to list its probabilities")
        self.table = QTableWidget(NUM_CLASSES, 2)
        self.table.setHorizontalHeaderLabels(["class", "probability"])
        self._lay_out()
        self.class_box.currentIndexChanged.connect(self.recolour)
        self.threshold_slider.valueChanged.connect(self.recolour)
        self.probability_button.clicked.connect(self.add_probability_layer)
        self.pixel_map_button.clicked.connect(self.add_pixel_map)
        self.viewer.layers.events.inserted.connect(self._attach)
        self._attach()

    def _lay_out(self) -> None:
        form = QFormLayout()
        form.addRow("class", self.class_box)
        threshold_row = QHBoxLayout()
        threshold_row.addWidget(self.threshold_slider)
        threshold_row.addWidget(self.threshold_label)
        form.addRow("threshold", threshold_row)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.probability_button)
        layout.addWidget(self.pixel_map_button)
        layout.addWidget(self.cell_label)
        layout.addWidget(self.table)

    @property
    def class_id(self) -> int:
        return int(self.class_box.currentIndex())

    @property
    def threshold(self) -> float:
        return self.threshold_slider.value() / 100

    def set_class(self, class_id: int, threshold: float | None = None) -> None:
        """Choose the class (and threshold) as a user would; recolours the cells."""
        if threshold is not None:
            self.threshold_slider.setValue(round(threshold * 100))
        self.class_box.setCurrentIndex(class_id)
        self.recolour()

    def cells_layer(self):
        """The newest cells layer this plugin opened, or None."""
        for layer in reversed(list(self.viewer.layers)):
            if layer_kind(layer) == "cells":
                return layer
        return None

    def _attach(self, event=None) -> None:
        layer = self.cells_layer()
        if layer is None or layer is self._layer:
            return
        self._layer = layer
        layer.mouse_drag_callbacks.append(self._on_click)
        layer.events.selected_label.connect(lambda event: self.show_cell(int(layer.selected_label)))
        field = field_of_cells_layer(layer)
        self.pixel_map_button.setEnabled(field.pixel_maps_path is not None)
        self.recolour()

    def recolour(self, *_args) -> None:
        """Colour every cell of the cells layer by its probability of the chosen class."""
        self.threshold_label.setText(f"{self.threshold:.2f}")
        layer = self.cells_layer()
        if layer is None:
            return
        from napari.utils.colormaps import DirectLabelColormap

        layer.colormap = DirectLabelColormap(color_dict=probability_colours(layer.features, self.class_id,
                                                                            self.threshold))

    def _on_click(self, layer, event) -> None:
        value = layer.get_value(event.position, world=True)
        if value:
            self.show_cell(int(value))

    def show_cell(self, cell_id: int) -> None:
        """List one cell's 28 probabilities, most probable first."""
        layer = self.cells_layer()
        rows = cell_probability_rows(layer.features, cell_id) if layer is not None else []
        self.cell_label.setText(f"cell {cell_id}" if rows else f"cell {cell_id}: no prediction")
        self.table.clearContents()
        for row, (name, probability) in enumerate(rows):
            self.table.setItem(row, 0, QTableWidgetItem(name))
            self.table.setItem(row, 1, QTableWidgetItem(f"{probability:.3f}"))

    def table_rows(self) -> list[tuple[str, str]]:
        """The table's filled rows as text (class, probability)."""
        rows = []
        for row in range(self.table.rowCount()):
            name, value = self.table.item(row, 0), self.table.item(row, 1)
            if name is not None and value is not None:
                rows.append((name.text(), value.text()))
        return rows

    def add_probability_layer(self, *_args):
        """Add the chosen class's cell probabilities as an image layer; returns it (None without cells)."""
        layer = self.cells_layer()
        if layer is None:
            return None
        data, kwargs, _ = probability_layer(field_of_cells_layer(layer), self.class_id)
        return self.viewer.add_image(data, **kwargs)

    def add_pixel_map(self, *_args):
        """Add a dense model's pixel map of the chosen class; returns it (None when there is none)."""
        layer = self.cells_layer()
        made = pixel_map_layer(field_of_cells_layer(layer), self.class_id) if layer is not None else None
        if made is None:
            return None
        data, kwargs, _ = made
        return self.viewer.add_image(data, **kwargs)
