"""Score predictions: image-level macro F1 and per-class F1, and with per-cell truth, cell-level mAP.

  python scripts/evaluate.py --pred preds/ --labels train.csv [--truth DIR] [--json] [--json-out FILE]

DIR is a synthetic output folder (cells.csv with per-cell labels, {id}_cells.png true masks, the channel
images): cell mAP is then reported with the project's segmentation (`cell_map`) and with the true masks
(`cell_map_true_masks`, the model re-run on crops of the true cells), so segmentation and MIL errors separate.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hpa_cells.devices import DEVICE_CHOICES_TEXT


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The command's options; `prog` names it in the usage line (default: the running file's name)."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pred", type=Path, required=True, help="prediction folder written by scripts/predict.py")
    p.add_argument("--labels", type=Path, required=True, help="label file (2018 Id,Target or 2021 ID,Label)")
    p.add_argument("--truth", type=Path, help="synthetic folder with per-cell truth (cells.csv + masks)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--json-out", type=Path, metavar="FILE", help="also write the JSON object to FILE")
    p.add_argument("--device", default="auto",
                   help=f"for the true-mask pass (--truth): {DEVICE_CHOICES_TEXT} (default: %(default)s)")
    return p


def main(argv: list[str] | None = None, *, prog: str | None = None) -> int:
    """Run `evaluate` with `argv` (default: sys.argv[1:]); 0 on success, 2 for bad input."""
    args = build_parser(prog).parse_args(argv)
    from hpa_cells.devices import DeviceError, describe_device, device_line, resolve_device
    from hpa_cells.labels import LabelFileError
    from hpa_cells.predictions import PredictionFolderError
    from mil.evaluation import TruthFolderError, evaluate_predictions

    try:  # DeviceError is a ValueError: a cuda device on a machine without one
        device = resolve_device(args.device)
        report = evaluate_predictions(args.pred, args.labels, args.truth, device)
    except (DeviceError, LabelFileError, PredictionFolderError, TruthFolderError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    record = {**report.to_dict(), "device": describe_device(device)}
    if args.json_out is not None:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(record, indent=2) + "\n")
    if args.json:
        print(json.dumps(record, indent=2))
    else:
        print("\n".join([*report.lines(), device_line(device)]))
    return 0
