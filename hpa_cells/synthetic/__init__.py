"""Synthetic HPA-like fields of view with per-cell ground truth.

Real HPA data has image-level labels only; this generator makes images whose every cell has known
labels, so per-cell localization recovered by a weakly supervised (MIL) model can be measured.
Image label sets follow the real 2018 label distribution (optionally balanced), each label is carried
by a random subset of the cells, and per-cell green brightness varies widely so that counting green
pixels does not reveal the class; the spatial pattern does.

Modules: `cell_lines` (morphology table, length scale), `shapes` (super-ellipse cell and nucleus
shapes), `cell_plans` (one cell's plan per stage: interphase, metaphase, anaphase, telophase),
`field_plan` (seeding colonies, which cells divide), `rasterise` (instance masks, distance maps),
`field_layout` (the rasterised field and per-cell geometry), `anatomy` (nucleoli, MTOC, fibres, spindle,
bridge, ER network), `reference_channels` (red/blue/yellow), `patterns` (the 28 green generators),
`cell_labels` (which cells carry which labels), `microscope` (blur, noise, 8-bit), `label_sets` (real
2018 label-set table, balancing), `appearance` (named presets such as "hpa2018" that rescale morphology and
image formation toward a real layout), `dataset` (generator and dataset writer), `realism` (field statistics
compared with real fields), `contact_sheet`.
"""

from hpa_cells.synthetic.appearance import PRESETS, Appearance, preset_appearance
from hpa_cells.synthetic.cell_lines import CELL_LINE_NAMES, CELL_LINES, CellLine
from hpa_cells.synthetic.contact_sheet import make_contact_sheet
from hpa_cells.synthetic.dataset import (
    CELL_COLUMNS,
    CELLS_FILE,
    LABELS_FILE,
    SETTINGS_FILE,
    CellRecord,
    DatasetSummary,
    FieldPlan,
    OutputFolderError,
    SyntheticConfig,
    SyntheticGenerator,
    SyntheticSample,
    is_complete,
    sample_paths,
    write_dataset,
    write_sample_files,
)
from hpa_cells.synthetic.field_layout import LayoutError
from hpa_cells.synthetic.label_sets import (
    DEFAULT_MIN_PREVALENCE,
    BalancingError,
    LabelSetSampler,
    LabelSetTable,
    LabelSetTableError,
    balanced_probabilities,
    count_label_sets,
    derive_label_set_table,
    expected_prevalence,
    load_real_label_sets,
    read_label_set_table,
    write_label_set_table,
)
from hpa_cells.synthetic.patterns import DIVIDING_CLASSES, PATTERN_GENERATORS, REQUIRED_STAGES, PatternError

__all__ = [
    "CELLS_FILE",
    "CELL_COLUMNS",
    "CELL_LINES",
    "CELL_LINE_NAMES",
    "DEFAULT_MIN_PREVALENCE",
    "DIVIDING_CLASSES",
    "LABELS_FILE",
    "PATTERN_GENERATORS",
    "PRESETS",
    "REQUIRED_STAGES",
    "SETTINGS_FILE",
    "Appearance",
    "BalancingError",
    "CellLine",
    "CellRecord",
    "DatasetSummary",
    "FieldPlan",
    "LabelSetSampler",
    "LabelSetTable",
    "LabelSetTableError",
    "LayoutError",
    "OutputFolderError",
    "PatternError",
    "SyntheticConfig",
    "SyntheticGenerator",
    "SyntheticSample",
    "balanced_probabilities",
    "count_label_sets",
    "derive_label_set_table",
    "expected_prevalence",
    "is_complete",
    "load_real_label_sets",
    "make_contact_sheet",
    "preset_appearance",
    "read_label_set_table",
    "sample_paths",
    "write_dataset",
    "write_label_set_table",
    "write_sample_files",
]
