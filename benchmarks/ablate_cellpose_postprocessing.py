"""Ablation of the bundled Cellpose path's post-processing: flow-error check, per-image diameter refinement,
cell-probability threshold. AP against 8 synthetic fields (seed 4242) and the five real fields at 512 px.

  python benchmarks/ablate_cellpose_postprocessing.py

One torch thread; seconds per image include the refinement's second passes.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from hpa_cells.instance_metrics import average_precision
from segmentation.cellpose_segmenter import CellposeSegmenter, CellposeSettings, FlowSettings
from segmentation.training_data import real_reference_fields, synthetic_fields

REPO = Path(__file__).resolve().parents[1]
FLOWS = CellposeSettings(cell_assembly="flows", diameter_tolerance=1.25)  # the flows assembly, with refinement
CONFIGS = [
    ("default", FLOWS, FlowSettings()),
    ("no flow check", FLOWS, FlowSettings(flow_threshold=0.0)),
    ("no refine", CellposeSettings(cell_assembly="flows", diameter_tolerance=None), FlowSettings()),
    ("flow 0.8", FLOWS, FlowSettings(flow_threshold=0.8)),
    ("cellprob -1", FLOWS, FlowSettings(cellprob_threshold=-1.0)),
]


def main() -> None:
    torch.set_num_threads(1)
    sets = {"synthetic": synthetic_fields(8, 4242, 512, "cells"),
            "real": real_reference_fields(REPO.parent / "shared" / "data", 512, "cells")}
    print("| setting | synthetic AP@0.5 | AP@0.75 | s/image | real AP@0.5 | AP@0.75 | s/image |")
    print("|---|---|---|---|---|---|---|")
    for name, settings, flow in CONFIGS:
        segmenter = CellposeSegmenter(settings, flow=flow)
        segmenter.segment_batch([sets["synthetic"][0].image])  # warm-up (numba compilation)
        cells = []
        for fields in sets.values():
            started = time.time()
            results = segmenter.segment_batch([f.image for f in fields])
            seconds = (time.time() - started) / len(fields)
            ap = average_precision([f.mask for f in fields], [r.cells for r in results], thresholds=(0.5, 0.75))[0]
            cells += [f"{np.nanmean(ap[:, 0]):.3f}", f"{np.nanmean(ap[:, 1]):.3f}", f"{seconds:.2f}"]
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
