"""The "Run hpa-cells" dock widget: four open image layers (one per channel) or a folder of fields -> segmentation
-> the bundled model or a chosen model folder, in a worker thread with a progress bar; the prediction folder it
writes (`hpa_cells_napari.running`, the same files as `predict.py`) is then opened as layers. napari and Qt are
imported here only (napari loads this module)."""

from __future__ import annotations

from pathlib import Path

from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from hpa_cells.channels import CHANNEL_STRUCTURES, CHANNELS
from hpa_cells_napari.field_layers import field_layers, read_prediction_field
from hpa_cells_napari.running import RunError, field_id_of, run_prediction, write_field

FROM_LAYERS = "(the image layers above)"
SEGMENTERS = ("cellpose", "watershed")
DEFAULT_OUT = Path.home() / "hpa-cells-napari"


def _folder_row(edit: QLineEdit, title: str) -> QHBoxLayout:
    row = QHBoxLayout()
    row.addWidget(edit)
    button = QPushButton("...")
    button.clicked.connect(lambda: edit.setText(QFileDialog.getExistingDirectory(None, title) or edit.text()))
    row.addWidget(button)
    return row


class RunWidget(QWidget):
    """Segment and predict a field from napari; `run()` starts the worker and returns it."""

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.channel_boxes = {channel: QComboBox() for channel in CHANNELS}
        self.images_edit = QLineEdit()
        self.images_edit.setPlaceholderText(FROM_LAYERS)
        self.model_edit = QLineEdit("bundled")
        self.out_edit = QLineEdit(str(DEFAULT_OUT))
        self.segmenter_box = QComboBox()
        self.segmenter_box.addItems(SEGMENTERS)
        self.run_button = QPushButton("Run")
        self.progress = QProgressBar()
        self.status = QLabel("")
        self.worker = None
        self.out_folder: Path | None = None
        form = QFormLayout()
        for channel, structure in zip(CHANNELS, CHANNEL_STRUCTURES, strict=True):
            form.addRow(f"{channel} ({structure})", self.channel_boxes[channel])
        form.addRow("or fields folder", _folder_row(self.images_edit, "Folder of fields"))
        form.addRow("segmenter", self.segmenter_box)
        form.addRow("model folder", _folder_row(self.model_edit, "Model folder (written by train.py)"))
        form.addRow("output folder", _folder_row(self.out_edit, "Prediction folder to write"))
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.run_button)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        self.run_button.clicked.connect(self.run)
        self.viewer.layers.events.inserted.connect(self.refresh_layers)
        self.viewer.layers.events.removed.connect(self.refresh_layers)
        self.refresh_layers()

    def refresh_layers(self, *_args) -> None:
        """Offer every 2-D image layer for each channel; a layer whose name ends with the channel's colour (as the
        reader names them) is chosen for it."""
        names = [layer.name for layer in self.viewer.layers if layer._type_string == "image" and layer.ndim == 2]
        for channel, box in self.channel_boxes.items():
            current = box.currentText()
            box.clear()
            box.addItems(names)
            guess = next((n for n in names if channel in n.split()), current)
            if guess in names:
                box.setCurrentText(guess)

    def _inputs(self) -> tuple[Path, Path]:
        """(fields folder, output folder): the folder typed in, else the chosen layers written as one field."""
        out = Path(self.out_edit.text()).expanduser()
        typed = self.images_edit.text().strip()
        if typed:
            return Path(typed).expanduser(), out
        layers = {c: self.viewer.layers[box.currentText()] for c, box in self.channel_boxes.items()
                  if box.currentText() in self.viewer.layers}
        field_id = field_id_of(layers["red"].name.rsplit(" ", 2)[0]) if "red" in layers else "field"
        return write_field({c: layer.data for c, layer in layers.items()}, out, field_id), out

    def _steps(self, images: Path, out: Path, model: str, segmenter: str):
        yield from run_prediction(images, out, model, segmenter)
        return read_prediction_field(out)

    def run(self, *_args):
        """Start segmentation + prediction in a worker thread; returns the worker (None when the inputs are bad)."""
        from napari.qt.threading import create_worker

        try:
            images, out = self._inputs()
        except (RunError, KeyError) as err:
            self.status.setText(f"error: {err}")
            return None
        self.out_folder = out
        self.run_button.setEnabled(False)
        worker = create_worker(self._steps, images, out, self.model_edit.text().strip() or "bundled",
                               self.segmenter_box.currentText(), _start_thread=False)
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(self._on_done)
        worker.errored.connect(self._on_error)
        worker.finished.connect(lambda: self.run_button.setEnabled(True))
        self.worker = worker
        worker.start()
        return worker

    def _on_progress(self, progress) -> None:
        self.progress.setRange(0, progress.total)
        self.progress.setValue(progress.step)
        self.status.setText(progress.message)

    def _on_done(self, field) -> None:
        for data, kwargs, layer_type in field_layers(field):
            getattr(self.viewer, f"add_{layer_type}")(data, **kwargs)
        self.status.setText(f"done: {self.out_folder}")

    def _on_error(self, error: BaseException) -> None:
        self.status.setText(f"error: {error}")
