"""Which cells of a synthetic field carry which of the image's labels (single-cell variability).

Every label of the image is expressed by a random subset of the cells able to show it, from one cell
to all of them; a cell may end up with several labels and some cells with none. Carriers are picked
only among cells whose nucleus lies wholly inside the frame and with enough cytoplasm visible, so a
label is never carried only by a sliver cut off at the border, and the image label set is exactly the
union of the cells' label sets.

The dividing-cell classes are decided before the layout: `plan_mitotic_carriers` says which dividing
cells (stage + labels) the field needs, and `field_plan.plan_field` creates them.
"""

from __future__ import annotations

import numpy as np

from hpa_cells.synthetic.cell_lines import length_scale
from hpa_cells.synthetic.cell_plans import DIVIDING_STAGES, Stage
from hpa_cells.synthetic.field_layout import CellGeometry, FieldLayout
from hpa_cells.synthetic.patterns import DIVIDING_CLASSES, REQUIRED_STAGES

ALL_CELLS_PROBABILITY = 0.35
"""Chance that a label is expressed by every eligible cell (homogeneous staining) rather than a subset."""

MIN_CYTOPLASM_RATIO = 0.6
"""A carrier's visible cytoplasm must be at least this multiple of its nucleus area."""


class LabelAssignmentError(RuntimeError):
    """No cell of a field can carry one of the image's labels (the caller draws a new layout)."""


def plan_mitotic_carriers(
    rng: np.random.Generator, labels: tuple[int, ...]
) -> tuple[tuple[Stage, tuple[int, ...]], ...]:
    """The dividing cells a field with `labels` needs: (stage, mitotic labels) per cell.

    16 (bridge) gets 1-2 telophase cells, 17 (spindle) 1-2 metaphase/anaphase cells; 15 (microtubule
    ends) shares one of those cells half of the time, otherwise gets 1-2 dividing cells of its own.
    """
    demands: list[tuple[Stage, tuple[int, ...]]] = []
    for class_id in (16, 17):
        if class_id in labels:
            for _ in range(1 + int(rng.random() < 0.25)):
                stages = REQUIRED_STAGES[class_id]
                demands.append((stages[int(rng.integers(0, len(stages)))], (class_id,)))
    if 15 in labels:
        if demands and rng.random() < 0.5:
            index = int(rng.integers(0, len(demands)))
            stage, carried = demands[index]
            demands[index] = (stage, (*carried, 15))
        else:
            for _ in range(1 + int(rng.random() < 0.25)):
                demands.append((DIVIDING_STAGES[int(rng.integers(0, len(DIVIDING_STAGES)))], (15,)))
    return tuple(demands)


def can_carry(cell: CellGeometry, class_id: int, size: int) -> bool:
    """Whether `cell` can show `class_id` clearly enough to be one of its carriers."""
    if class_id in DIVIDING_CLASSES:
        return cell.dividing and class_id in cell.plan.mitotic_labels
    if cell.dividing or not cell.nucleus_complete:
        return False
    nucleus_area = cell.nucleus_area
    if nucleus_area == 0 or cell.area - nucleus_area < MIN_CYTOPLASM_RATIO * nucleus_area:
        return False
    if class_id == 22:  # cell junctions need a neighbour
        return int(cell.contact.sum()) >= max(6.0, 10.0 * length_scale(size))
    return True


def assign_cell_labels(
    rng: np.random.Generator, layout: FieldLayout, labels: tuple[int, ...]
) -> tuple[tuple[int, ...], ...]:
    """Per cell (in `layout.cells` order), the sorted labels it carries; their union is `labels`.

    Mitotic labels go to the dividing cells planned for them. Every other label goes to all eligible
    cells with probability `ALL_CELLS_PROBABILITY`, else to a uniformly random number (1..all) of
    them. Raises `LabelAssignmentError` when a label has no eligible cell.
    """
    carried: list[set[int]] = [set() for _ in layout.cells]
    for class_id in sorted(labels):
        eligible = [i for i, cell in enumerate(layout.cells) if can_carry(cell, class_id, layout.size)]
        if not eligible:
            raise LabelAssignmentError(
                f"no cell of this {layout.line.name} field ({len(layout.cells)} cells) can carry class {class_id}"
            )
        if class_id in DIVIDING_CLASSES:
            chosen = eligible
        elif rng.random() < ALL_CELLS_PROBABILITY:
            chosen = eligible
        else:
            count = int(rng.integers(1, len(eligible) + 1))
            chosen = sorted(int(i) for i in rng.choice(eligible, size=count, replace=False))
        for index in chosen:
            carried[index].add(class_id)
    per_cell = tuple(tuple(sorted(s)) for s in carried)
    union = set().union(*carried) if carried else set()
    if union != set(labels):
        raise LabelAssignmentError(
            f"cell labels {sorted(union)} do not cover the image labels {sorted(labels)}"
        )
    return per_cell
