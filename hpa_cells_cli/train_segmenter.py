"""Train the bundled Cellpose CPnet models (cells, nuclei) from real reference fields and synthetic fields.

Stages, each resumable (rerun the same command after an interruption and it continues from the last
checkpoint):

  pretrain   synthetic fields only                                  -> WORK/{kind}/pretrain
  loo        per real field: fine-tune from pretrain on the other real fields + synthetic, score the held-out
             field (leave-one-out AP@0.5/0.75 of this network alone: at the true diameter, and at the default
             diameter with refinement 1.25, "as_deployed", the name kept from when that was the default; the
             default cells-from-nuclei segmenter needs both networks: benchmarks/rescore_segmentation_loo.py)
                                                                     -> WORK/{kind}/loo-{id}
  final      fine-tune from pretrain on all real fields + synthetic  -> segmentation/models/hpa_cells_{kind}

Example:  python scripts/train_segmenter.py --kind cells --stages pretrain loo final
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from hpa_cells_cli.arguments import finite_number, whole_number

REPO = Path(__file__).resolve().parents[1]
LOO_REFINEMENT = 1.25
CROP_STEP = 16
"""Training crops are a multiple of this (the CPnet's downsampling)."""
"""Diameter tolerance of the loo stage's "as_deployed" score (one network's flows, as the former default)."""


def crop_side(text: str) -> int:
    """argparse type: a training crop side, a multiple of 16 px."""
    value = whole_number(CROP_STEP)(text)
    if value % CROP_STEP:
        raise argparse.ArgumentTypeError(f"must be a multiple of {CROP_STEP} px, got {text!r}")
    return value


def nbase_problem(nbase: list[int]) -> str | None:
    """Why `--nbase` cannot build a CPnet (as an error line), or None."""
    if len(nbase) < 2 or nbase[0] != 2:
        return f"--nbase must start with 2 (the two input channels) and name at least one layer, got {nbase}"
    return None


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The command's options; `prog` names it in the usage line (default: the running file's name)."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=("cells", "nuclei"), default="cells", help="which model (default: %(default)s)")
    parser.add_argument("--stages", nargs="+", choices=("pretrain", "loo", "final"), default=["pretrain", "loo", "final"],
                        help="stages to run, in order (default: %(default)s)")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data",
                        help="real data folder holding hpa2021_subset/ (default: %(default)s)")
    parser.add_argument("--work-dir", type=Path, default=REPO / "runs" / "segmenter",
                        help="checkpoints and per-stage results (default: %(default)s)")
    parser.add_argument("--out-dir", type=Path, default=REPO / "segmentation" / "models",
                        help="where the final model is written (default: %(default)s)")
    parser.add_argument("--size", type=whole_number(64), default=512,
                        help="working size, longer side in px, >= 64 (default: %(default)s)")
    parser.add_argument("--synthetic", type=whole_number(1), default=48, help="synthetic training fields (default: %(default)s)")
    parser.add_argument("--synthetic-seed", type=whole_number(0), default=1000, help="seed of the synthetic fields (default: %(default)s)")
    parser.add_argument("--pretrain-steps", type=whole_number(1), default=400, help="steps of the pretrain stage (default: %(default)s)")
    parser.add_argument("--finetune-steps", type=whole_number(1), default=150, help="steps of each fine-tune stage (default: %(default)s)")
    parser.add_argument("--real-weight", type=finite_number(above=0.0), default=3.0,
                        help="sampling weight of a real field relative to a synthetic one (default: %(default)s)")
    parser.add_argument("--crop-size", type=crop_side, default=160,
                        help="training crop in px, a multiple of 16 (default: %(default)s)")
    parser.add_argument("--nbase", type=whole_number(1), nargs="+", default=[2, 16, 32, 64, 256],
                        help="CPnet widths; the last must stay 256 for Cellpose's own eval (default: %(default)s)")
    parser.add_argument("--seed", type=whole_number(0), default=0, help="training seed (default: %(default)s)")
    parser.add_argument("--threads", type=whole_number(0), default=0, help="torch CPU threads, 0 = torch's default")
    return parser


def main(argv: list[str] | None = None, *, prog: str | None = None) -> int:
    """Run `train-segmenter` with `argv` (default: sys.argv[1:]); 0 when the stages ran. Long because it is
    the three stages in order, sharing their fields and configurations, as one readable recipe."""
    args = build_parser(prog).parse_args(argv)
    if (problem := nbase_problem(args.nbase)) is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    import logging
    from dataclasses import replace

    import torch

    from segmentation.cellpose_models import (
        BUNDLED_MODEL_NAMES,
        build_network,
        convert_to_float16,
        resolve_model,
        sha256_of_file,
    )
    from segmentation.cellpose_segmenter import default_diameters
    from segmentation.cellpose_training import SegmenterTrainConfig, evaluate_network, train_segmenter
    from segmentation.training_data import real_reference_fields, synthetic_fields

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.time()
    kind_dir = args.work_dir / args.kind
    kind_dir.mkdir(parents=True, exist_ok=True)
    try:
        real = real_reference_fields(args.data, args.size, args.kind)
    except FileNotFoundError as err:
        print(f"error: {err} (pass the folder holding it with --data)", file=sys.stderr)
        return 2
    synthetic = synthetic_fields(args.synthetic, args.synthetic_seed, args.size, args.kind)
    synthetic_val = synthetic_fields(8, args.synthetic_seed + 1, args.size, args.kind)
    real = [replace(f, weight=args.real_weight) for f in real]
    base = SegmenterTrainConfig(kind=args.kind, nbase=tuple(args.nbase), crop_size=args.crop_size, seed=args.seed,
                                diam_mean=30.0 if args.kind == "cells" else 17.0)
    pretrained = kind_dir / "pretrain" / "model.safetensors"
    summary: dict = {"kind": args.kind, "stages": {}}

    if "pretrain" in args.stages:
        cfg = replace(base, steps=args.pretrain_steps)
        record = train_segmenter(synthetic, real[:1] + synthetic_val[:2], cfg, kind_dir / "pretrain", pretrained)
        summary["stages"]["pretrain"] = record["validation"]
    # fine-tuning sees each field over a wider range of scales (x0.5-x1.5), since real cell sizes vary that much
    fine = replace(base, steps=args.finetune_steps, learning_rate=0.002, warmup_steps=10, scale_range=1.0,
                   init_weights=str(pretrained) if pretrained.is_file() else None)
    cell_d, nucleus_d = default_diameters(args.size)
    deployed_diameter = cell_d if args.kind == "cells" else nucleus_d
    if "loo" in args.stages:
        loo = {}
        for held_out in real:
            train = [f for f in real if f.name != held_out.name] + synthetic
            folder = kind_dir / f"loo-{held_out.name[:8]}"
            record = train_segmenter(train, [held_out], fine, folder, folder / "model.safetensors")
            net = build_network(resolve_model(folder / "model.safetensors", args.kind))
            deployed = evaluate_network(net, fine, [held_out], diameter=deployed_diameter,
                                        refine_tolerance=LOO_REFINEMENT)
            loo[held_out.name] = {"at_true_diameter": record["validation"][held_out.name],
                                  "as_deployed": deployed[held_out.name]}
            print(f"held out {held_out.name}: {loo[held_out.name]}", flush=True)
        summary["stages"]["loo"] = loo
        (kind_dir / "loo_scores.json").write_text(json.dumps(loo, indent=2))
    if "final" in args.stages:
        out = args.out_dir / f"{BUNDLED_MODEL_NAMES[args.kind]}.safetensors"
        record = train_segmenter(real + synthetic, synthetic_val, fine, kind_dir / "final", out)
        convert_to_float16(out)  # the committed file: half the size, same masks
        summary["stages"]["final"] = {"synthetic_validation": record["validation"], "weights": str(out),
                                      "sha256": sha256_of_file(out)}
    summary["seconds"] = round(time.time() - started, 1)
    (kind_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 0
