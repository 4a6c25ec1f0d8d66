"""The napari plugin of hpa-cells (the optional extra `pip install -e ".[napari]"`), registered through the npe2
manifest `napari.yaml` of this package.

- `reader`: a prediction folder, a maps folder or one field's channel files -> napari layer data (the four channels
  in HPA's colours, cells and nuclei as Labels layers with a per-cell features table). Built by `field_layers`
  from the one prediction-folder reader (`hpa_cells.predictions`) and the cell cache (`hpa_cells.cache`).
- `class_widget`: colour every cell by one class's probability (threshold, QC cells dimmed), the selected cell's
  28 probabilities, class-probability and dense pixel-map layers on demand (`colouring` holds the colour rules).
- `run_widget`: segmentation + a model on four open image layers or a folder, in a worker thread; `running` calls
  the commands' own library path (`hpa_cells_cli.segment` / `hpa_cells_cli.predict`), so the GUI writes the same
  prediction folder as `predict.py`.

This is a top layer (like `hpa_cells_cli`): it may import everything, nothing imports it, and only the widget
modules import napari or Qt (napari itself loads them); `import hpa_cells_napari` imports neither.
"""
