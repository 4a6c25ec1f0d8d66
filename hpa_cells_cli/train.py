"""Train a MIL model on a cell cache, from image-level labels only.

  python scripts/train.py --cache cells.h5 --out runs/NAME [--encoder resnet10t] [--head class_gated_attention]
                          [--epochs N] [--seed S] [--folds K --fold I | --split-file SPLIT.json]
  python scripts/train.py --family dense --cache cells.h5 --out runs/DENSE [--dense-arch fpn|unet]
                          [--dense-encoder tu-resnet10t] [--cell-pool mean|lse] [--dense-input-size 256]

--family crop (default): a timm encoder per cell crop, then a pooling head over the cells. --family dense: a
segmentation-models-pytorch U-Net/FPN over the whole field gives per-pixel class logits, pooled inside each cell
(--cell-pool), then across cells by the same pooling head (--head); it needs a cache written by this version of
scripts/segment.py (schema 2, with the full images).

The result is a model folder (config.json, weights.safetensors, thresholds.json, metrics.json, plus metrics.csv
and training_curves.png). Rerunning the same command after an interruption resumes from the last epoch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The command's options; `prog` names it in the usage line (default: the running file's name)."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", type=Path, required=True, help="HDF5 cell cache written by scripts/segment.py")
    p.add_argument("--out", type=Path, required=True, help="model folder to write (resumed if it has a checkpoint)")
    p.add_argument("--family", choices=("crop", "dense"), default="crop", help="model family (default: %(default)s)")
    p.add_argument("--encoder", default="resnet10t", help="crop family: timm encoder name (default: %(default)s)")
    p.add_argument("--encoder-weights", type=Path,
                   help="local timm checkpoint to start the encoder from (dense family: a tu- encoder's timm model, or "
                        "a trained crop-MIL model folder with the same encoder, whose input standardisation it takes)")
    p.add_argument("--dense-arch", choices=("unet", "fpn"), default="fpn",
                   help="dense family: segmentation network (default: %(default)s)")
    p.add_argument("--dense-encoder", default="tu-resnet10t",
                   help="dense family: smp encoder name, timm models as tu-NAME (default: %(default)s)")
    p.add_argument("--cell-pool", choices=("mean", "lse"), default="mean",
                   help="dense family: pooling of pixel logits inside each cell (default: %(default)s)")
    p.add_argument("--dense-input-size", type=int, default=256,
                   help="dense family: the field's longer side is resized to this, a multiple of 32 (default: %(default)s)")
    p.add_argument("--dense-window", type=int, default=None,
                   help="dense family: train on random windows of this many pixels of the field at the input size "
                        "(a multiple of 32), e.g. --dense-input-size 512 --dense-window 256 trains at full resolution "
                        "for the cost of 256 px; prediction sees whole fields (default: whole fields)")
    p.add_argument("--dense-decoder-channels", type=int, default=64,
                   help="dense family: decoder width: FPN pyramid channels (a multiple of 64) or U-Net's first "
                        "block (halved per block); 0 = smp's defaults (FPN 256, U-Net 256..16) (default: %(default)s)")
    p.add_argument("--head", default="class_gated_attention", help="pooling head (default: %(default)s)")
    p.add_argument("--input-size", type=int, default=64, help="crops are resized to this before the encoder (default: %(default)s)")
    p.add_argument("--no-mask-channel", action="store_true", help="do not feed the cell mask as a 5th channel")
    p.add_argument("--epochs", type=int, default=30, help="(default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=8, help="bags per step (default: %(default)s)")
    p.add_argument("--max-cells", type=int, default=12,
                   help="crop family: cells drawn per bag in training (default: %(default)s)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default: %(default)s)")
    p.add_argument("--loss", choices=("bce", "focal"), default="bce", help="(default: %(default)s)")
    p.add_argument("--class-weighting", action="store_true", help="weight positives by negative/positive ratio")
    p.add_argument("--val-fraction", type=float, default=0.2, help="(default: %(default)s)")
    p.add_argument("--folds", type=int, default=0, help="use fold --fold of K iterative-stratified folds as validation")
    p.add_argument("--fold", type=int, default=0, help="(default: %(default)s)")
    p.add_argument("--split-file", type=Path, metavar="JSON",
                   help='a fixed split: {"train": [image ids], "validation": [image ids]} (overrides --val-fraction '
                        "and --folds; e.g. a cross-validation fold of benchmarks/bench_real.py)")
    p.add_argument("--patience", type=int, default=8, help="early-stopping patience in epochs (default: %(default)s)")
    p.add_argument("--cell-labels", type=Path, metavar="CSV",
                   help="train on per-cell labels (image_id, cell_id, labels; e.g. a synthetic cells.csv with a cache "
                        "made by --segmenter masks) instead of image labels: the fully supervised upper bound")
    p.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers (default: %(default)s)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default: %(default)s)")
    return p


def main(argv: list[str] | None = None, *, prog: str | None = None) -> int:
    """Run `train` with `argv` (default: sys.argv[1:]); 0 on success, 2 for bad input. Long because it is
    the straight sequence of option checks, each with its own one-line error, before the one training call."""
    args = build_parser(prog).parse_args(argv)
    import logging

    from hpa_cells.cache import CellCacheSchemaError
    from mil.cell_labels import CellLabelError
    from mil.config import ConfigError, DenseConfig, MILConfig
    from mil.encoders import EncoderWeightsError
    from mil.training import TrainConfig, train_model
    from mil.training.splits import SplitFileError

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.cache.is_file():
        print(f"error: cell cache not found: {args.cache}", file=sys.stderr)
        return 2
    try:
        if args.family == "dense":
            model_config = DenseConfig(arch=args.dense_arch, encoder=args.dense_encoder, head=args.head,
                                       cell_pool=args.cell_pool, input_size=args.dense_input_size,
                                       decoder_channels=args.dense_decoder_channels or None)
            if args.encoder_weights is not None and args.encoder_weights.is_dir():
                from mil.families.dense import with_crop_model_statistics

                model_config = with_crop_model_statistics(model_config, args.encoder_weights)
        else:
            model_config = MILConfig(encoder=args.encoder, head=args.head, input_size=args.input_size,
                                     use_mask_channel=not args.no_mask_channel)
    except (ConfigError, EncoderWeightsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.dense_window is not None and args.family != "dense":
        print("error: --dense-window applies to --family dense only", file=sys.stderr)
        return 2
    if args.dense_window is not None and args.dense_window > args.dense_input_size:
        print(f"error: --dense-window {args.dense_window} is larger than --dense-input-size {args.dense_input_size}",
              file=sys.stderr)
        return 2
    try:
        train_config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, max_cells=args.max_cells,
                                   learning_rate=args.lr, loss=args.loss, class_weighting=args.class_weighting,
                                   val_fraction=args.val_fraction, folds=args.folds, fold=args.fold,
                                   patience=args.patience, seed=args.seed, num_workers=args.workers,
                                   device=args.device,
                                   encoder_weights=str(args.encoder_weights) if args.encoder_weights else None,
                                   cell_labels=str(args.cell_labels) if args.cell_labels else None,
                                   dense_window=args.dense_window,
                                   split_file=str(args.split_file) if args.split_file else None)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        metrics = train_model(args.cache, args.out, model_config, train_config)
    except (CellCacheSchemaError, CellLabelError, EncoderWeightsError, SplitFileError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"\nModel folder: {args.out} ({args.family} family)")
    print(f"  best epoch {metrics['best_epoch']} of {metrics['epochs_run']}; validation loss {metrics['val_loss']:.4f}")
    print(f"  validation macro F1 {metrics['val_macro_f1']:.3f} with fitted thresholds "
          f"({metrics['val_macro_f1_at_0.5']:.3f} at 0.5)")
    print(f"  {metrics['n_train_images']} training / {metrics['n_val_images']} validation images; "
          f"{metrics['train_seconds_this_run']:.0f} s training, {metrics['train_images_per_second']} images/s, "
          f"{metrics['train_cells_per_second']} cells/s")
    return 0
