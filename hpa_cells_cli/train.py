"""Train a MIL model on a cell cache, from image-level labels only.

  python scripts/train.py --cache cells.h5 --out runs/NAME [--encoder resnet10t] [--head class_gated_attention]
                          [--epochs N] [--seed S] [--folds K --fold I | --split-file SPLIT.json]
  python scripts/train.py --family dense --cache cells.h5 --out runs/DENSE [--dense-arch fpn|unet]
                          [--dense-encoder tu-resnet10t] [--cell-pool mean|lse] [--dense-input-size 256]
  python scripts/train.py --init runs/SYNTHETIC --cache real.h5 --out runs/FINETUNED
                          [--init-standardisation keep|recompute] [--freeze-encoder-epochs N]

--family crop (default): a timm encoder per cell crop, then a pooling head over the cells. --family dense: a
segmentation-models-pytorch U-Net/FPN over the whole field gives per-pixel class logits, pooled inside each cell
(--cell-pool), then across cells by the same pooling head (--head); it needs a cache written by this version of
scripts/segment.py (schema 2, with the full images).

--init MODEL_FOLDER fine-tunes a trained model of either family: every weight (encoder and head) and the
architecture come from that folder (architecture options given as well must agree with it); the input
standardisation is the folder's (keep) or measured on the new training cells (recompute).

--labels CSV trains on that file's image labels (2018 Id,Target or 2021 ID,Label) instead of the cache's, without
rewriting the cache; cache images the file does not list count as unlabelled and are left out (the count is
printed). The file and its sha256 are recorded in config.json (training.labels, training.labels_sha256).

The result is a model folder (config.json, weights.safetensors, thresholds.json, metrics.json, plus metrics.csv
and training_curves.png). Rerunning the same command after an interruption resumes from the last epoch; rerunning
it with more --epochs continues a finished run. A folder holding a finished model is otherwise never trained over:
--overwrite trains it again from scratch.

--device auto (the default) trains on the GPU when torch sees one; --precision auto uses bf16 there (fp16 on GPUs
without bf16, fp32 on the CPU). Several processes, on one machine or several, with torch DDP:

  torchrun --nproc-per-node 4 scripts/train.py --cache cells.h5 --out runs/NAME ...

Each process trains on its share of the bags (--batch-size is per process) and validates on its share of the
validation images; rank 0 alone writes the checkpoint and the model folder (same format as one process's).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from hpa_cells.devices import DEVICE_CHOICES_TEXT
from hpa_cells_cli.arguments import (
    fold_count,
    fraction_option,
    non_negative_float,
    non_negative_int,
    open_fraction,
    positive_float,
    positive_int,
    rounds_option,
)

CROP_OPTIONS = {"encoder": "encoder", "head": "head", "input_size": "input_size", "no_mask_channel": "use_mask_channel"}
DENSE_OPTIONS = {"dense_arch": "arch", "dense_encoder": "encoder", "head": "head", "cell_pool": "cell_pool",
                 "dense_input_size": "input_size", "dense_decoder_channels": "decoder_channels"}
"""Architecture options of each family -> the model config field each sets."""


def _add_data_options(p: argparse.ArgumentParser) -> None:
    """--overwrite and --labels: what the run may replace, which labels it trains on."""
    p.add_argument("--overwrite", action="store_true",
                   help="train from scratch into an --out folder that holds a finished model or a checkpoint, "
                        "replacing them")
    p.add_argument("--labels", type=Path, metavar="CSV",
                   help="image labels (Id,Target or ID,Label) to train on instead of the cache's; unlisted cache "
                        "images are left out as unlabelled; the cache is not changed")


def _add_fine_tune_options(p: argparse.ArgumentParser) -> None:
    """--init and what goes with it (fine-tuning a trained model folder)."""
    p.add_argument("--init", type=Path, metavar="MODEL_FOLDER",
                   help="fine-tune: start from this trained model folder (all weights; its family and architecture)")
    p.add_argument("--init-standardisation", choices=("keep", "recompute"), default="keep",
                   help="with --init: keep the folder's input standardisation or measure it on the new training "
                        "cells (default: %(default)s)")
    p.add_argument("--freeze-encoder-epochs", type=non_negative_int, default=0, metavar="N",
                   help="hold the encoder fixed for the first N epochs, then train everything (default: %(default)s)")


def _add_device_options(p: argparse.ArgumentParser) -> None:
    """--workers, --device, --precision: where and how fast the run trains (not what it learns)."""
    p.add_argument("--workers", type=non_negative_int, default=0,
                   help="DataLoader worker processes per training process, each reading the cache through its own "
                        "HDF5 handle (default: %(default)s)")
    p.add_argument("--device", default="auto", help=f"{DEVICE_CHOICES_TEXT}; under torchrun each process takes the "
                                                    "GPU of its LOCAL_RANK (default: %(default)s)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                   help="auto: bf16 autocast on GPUs that have it, fp16 with loss scaling on older GPUs, fp32 on the "
                        "CPU (default: %(default)s)")


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The command's options; `prog` names it in the usage line (default: the running file's name)."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", type=Path, required=True, help="HDF5 cell cache written by scripts/segment.py")
    p.add_argument("--out", type=Path, required=True,
                   help="model folder to write (resumed if it has a checkpoint; a finished model is refused unless "
                        "--overwrite or more --epochs continue it)")
    _add_data_options(p)
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
    p.add_argument("--dense-input-size", type=positive_int, default=256,
                   help="dense family: the field's longer side is resized to this, a multiple of 32 (default: %(default)s)")
    p.add_argument("--dense-window", type=positive_int, default=None,
                   help="dense family: train on random windows of this many pixels of the field at the input size "
                        "(a multiple of 32), e.g. --dense-input-size 512 --dense-window 256 trains at full resolution "
                        "for the cost of 256 px; prediction sees whole fields (default: whole fields)")
    p.add_argument("--dense-decoder-channels", type=non_negative_int, default=64,
                   help="dense family: decoder width: FPN pyramid channels (a multiple of 64) or U-Net's first "
                        "block (halved per block); 0 = smp's defaults (FPN 256, U-Net 256..16) (default: %(default)s)")
    p.add_argument("--head", default="class_gated_attention", help="pooling head (default: %(default)s)")
    p.add_argument("--input-size", type=positive_int, default=64, help="crops are resized to this before the encoder (default: %(default)s)")
    p.add_argument("--no-mask-channel", action="store_true", help="do not feed the cell mask as a 5th channel")
    _add_fine_tune_options(p)
    p.add_argument("--epochs", type=positive_int, default=30, help="(default: %(default)s)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="bags per step (default: %(default)s)")
    p.add_argument("--max-cells", type=positive_int, default=12,
                   help="crop family: cells drawn per bag in training (default: %(default)s)")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="peak learning rate (default: %(default)s)")
    p.add_argument("--loss", choices=("bce", "focal"), default="bce", help="(default: %(default)s)")
    p.add_argument("--class-weighting", action="store_true", help="weight positives by negative/positive ratio")
    p.add_argument("--val-fraction", type=open_fraction, default=0.2, help="(default: %(default)s)")
    p.add_argument("--folds", type=fold_count, default=0, help="use fold --fold of K iterative-stratified folds as validation")
    p.add_argument("--fold", type=non_negative_int, default=0, help="(default: %(default)s)")
    p.add_argument("--split-file", type=Path, metavar="JSON",
                   help='a fixed split: {"train": [image ids], "validation": [image ids]} (overrides --val-fraction '
                        "and --folds; e.g. a cross-validation fold of benchmarks/bench_real.py)")
    p.add_argument("--patience", type=positive_int, default=8, help="early-stopping patience in epochs (default: %(default)s)")
    p.add_argument("--cell-labels", type=Path, metavar="CSV",
                   help="train on per-cell labels (image_id, cell_id, labels; e.g. a synthetic cells.csv with a cache "
                        "made by --segmenter masks) instead of image labels: the fully supervised upper bound")
    _add_weak_supervision_options(p)
    p.add_argument("--seed", type=non_negative_int, default=0, help="(default: %(default)s)")
    _add_device_options(p)
    return p


def _add_weak_supervision_options(p: argparse.ArgumentParser) -> None:
    """The cell-level terms beside the image loss, and self-training (BENCHMARKS.md "Weak supervision": what
    each measured on the MIL benchmark)."""
    p.add_argument("--mosaic-bags", type=non_negative_int, default=0, metavar="N",
                   help="crop family: add N bags per epoch that each mix the cells of 2-4 single-label training "
                        "images with different labels (label: the union; see mil/mosaics.py); replaces "
                        "--mosaic-fraction (default: %(default)s)")
    p.add_argument("--mosaic-fraction", type=fraction_option, default="auto", metavar="auto|F",
                   help="crop family: add F x (training images) such mosaic bags per epoch. auto: the default "
                        "recipe's fraction for a crop-family run from the cache's image labels (BENCHMARKS.md "
                        "\"Weak supervision\"), 0 with --family dense, --cell-labels, --labels, --mosaic-bags or "
                        "--init (fine-tuning); "
                        "a training set without two single-label images of different labels trains without them "
                        "(a warning says so) (default: %(default)s)")
    p.add_argument("--negative-cell-weight", type=non_negative_float, default=0.5, metavar="W",
                   help="weight of the loss pushing down every cell's logits of classes its image lacks "
                        "(default: %(default)s)")
    p.add_argument("--topk-cells", type=non_negative_int, default=0, metavar="K",
                   help="crop family: for every class an image has, pull up its K best cells (top-k instance loss; "
                        "0 = off) (default: %(default)s)")
    p.add_argument("--topk-weight", type=non_negative_float, default=1.0, metavar="W",
                   help="weight of the top-k instance loss (default: %(default)s)")
    p.add_argument("--self-training-rounds", type=rounds_option, default="auto", metavar="auto|R",
                   help="crop family: after the MIL model, R rounds that each train a new model on the previous "
                        "one's confident cells as per-cell targets (mil/self_training.py; rounds in OUT/round*, the "
                        "last round's model in OUT). auto: the default recipe's rounds for a crop-family run from "
                        "image labels (BENCHMARKS.md \"Weak supervision\"), 0 with --family dense, --cell-labels or --init "
                        "(fine-tuning); 0 trains the MIL model alone (default: %(default)s)")
    p.add_argument("--pseudo-positive-ratio", type=open_fraction, default=0.5, metavar="F",
                   help="self-training: a cell is a positive target for a class its image has when its probability "
                        "is at least F x the image's best cell's (default: %(default)s)")
    p.add_argument("--pseudo-negative-ratio", type=open_fraction, default=0.2, metavar="F",
                   help="self-training: ... a negative target when at most F x the best cell's; unknown between "
                        "(default: %(default)s)")
    p.add_argument("--pseudo-label-weight", type=non_negative_float, default=1.0, metavar="W",
                   help="self-training: weight of the per-cell pseudo-label loss (default: %(default)s)")


def _explicit_options(argv: list[str] | None, prog: str | None) -> set[str]:
    """The options given on the command line (their dests), as opposed to those left at their defaults (even an
    option given with its default value counts: it must then agree with an --init folder)."""
    parser = build_parser(prog)
    for action in parser._actions:  # argparse has no public way to drop every default
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def _option_value(args: argparse.Namespace, dest: str) -> object:
    """An architecture option's value as its model config field holds it."""
    if dest == "no_mask_channel":
        return not args.no_mask_channel
    if dest == "dense_decoder_channels":
        return args.dense_decoder_channels or None
    return getattr(args, dest)


def _requested_config(args: argparse.Namespace):
    """The model config the architecture options describe (a fresh run's)."""
    from mil.config import DenseConfig, MILConfig

    if args.family == "dense":
        config = DenseConfig(**{field: _option_value(args, dest) for dest, field in DENSE_OPTIONS.items()})
        if args.encoder_weights is not None and args.encoder_weights.is_dir():
            from mil.families.dense import with_crop_model_statistics

            config = with_crop_model_statistics(config, args.encoder_weights)
        return config
    return MILConfig(**{field: _option_value(args, dest) for dest, field in CROP_OPTIONS.items()})


def _fine_tune_config(args: argparse.Namespace, explicit: set[str]):
    """With --init: the folder's model config, with the architecture options given explicitly put in (training
    refuses any that differ from the folder's). ConfigError for an option of the other family."""
    from mil.config import ConfigError
    from mil.training import read_init_source

    source = read_init_source(args.init).model_config
    if "family" in explicit and args.family != source.family:
        return _requested_config(args)  # training refuses it, naming both families
    options = CROP_OPTIONS if source.family == "crop" else DENSE_OPTIONS
    foreign = sorted((explicit & (set(CROP_OPTIONS) | set(DENSE_OPTIONS))) - set(options))
    if foreign:
        names = ", ".join("--" + dest.replace("_", "-") for dest in foreign)
        raise ConfigError(f"{names}: not an option of the {source.family} family, and --init {args.init} holds a "
                          f"{source.family} model")
    return replace(source, **{field: _option_value(args, dest) for dest, field in options.items() if dest in explicit})


def _check_options(args: argparse.Namespace, explicit: set[str], model_config) -> str | None:
    """The first option combination that cannot run, as an error line; None when they all can."""
    if "init_standardisation" in explicit and args.init is None:
        return "--init-standardisation applies to fine-tuning (--init) only"
    if args.dense_window is not None and model_config.family != "dense":
        return "--dense-window applies to --family dense only"
    fraction = args.mosaic_fraction not in ("auto", 0.0)
    if (args.mosaic_bags or fraction) and model_config.family != "crop":
        return "--mosaic-bags and --mosaic-fraction apply to --family crop only (mosaics mix cell crops of several fields)"
    if (args.mosaic_bags or fraction) and args.labels is not None:
        return ("--mosaic-bags and --mosaic-fraction cannot be combined with --labels yet (mosaic bags take their "
                "labels from the cache): relabel the cache instead (hpa-cells relabel --cache CACHE --labels CSV), or "
                "drop them")
    if args.mosaic_bags and fraction:
        return "--mosaic-bags and --mosaic-fraction exclude each other (a count or a fraction of the training images)"
    if (args.mosaic_bags or fraction) and args.cell_labels is not None:
        return "--mosaic-bags and --mosaic-fraction cannot be combined with --cell-labels"
    rounds = args.self_training_rounds
    if args.topk_cells and model_config.family != "crop":
        return "--topk-cells applies to --family crop only"
    if rounds != "auto" and rounds and model_config.family != "crop":
        return "--self-training-rounds applies to --family crop only"
    if rounds != "auto" and rounds and args.cell_labels is not None:
        return "--self-training-rounds cannot be combined with --cell-labels (the cells already have labels)"
    if self_training_rounds(args, model_config) and args.pseudo_negative_ratio >= args.pseudo_positive_ratio:
        return (f"--pseudo-negative-ratio {args.pseudo_negative_ratio} must be below --pseudo-positive-ratio "
                f"{args.pseudo_positive_ratio}")
    if args.dense_window is not None and args.dense_window > model_config.input_size:
        return f"--dense-window {args.dense_window} is larger than --dense-input-size {model_config.input_size}"
    return None


def mosaic_fraction(args: argparse.Namespace, family: str) -> float:
    """The mosaic bags per training image: --mosaic-fraction, where `auto` is the default recipe's
    (`mil.mosaics.DEFAULT_MOSAIC_FRACTION`) for a crop-family run from the cache's image labels without a count of
    mosaic bags, else 0; fine-tuning (--init) keeps 0, the recipe that scored best on real fields."""
    from mil.mosaics import DEFAULT_MOSAIC_FRACTION

    if args.mosaic_fraction != "auto":
        return float(args.mosaic_fraction)
    plain = (family == "crop" and args.cell_labels is None and args.labels is None and not args.mosaic_bags
             and args.init is None)
    return DEFAULT_MOSAIC_FRACTION if plain else 0.0


def _train_config(args: argparse.Namespace, model_family: str):
    from mil.training import TrainConfig

    return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, max_cells=args.max_cells,
                       learning_rate=args.lr, loss=args.loss, class_weighting=args.class_weighting,
                       val_fraction=args.val_fraction, folds=args.folds, fold=args.fold, patience=args.patience,
                       seed=args.seed, num_workers=args.workers, device=args.device, precision=args.precision,
                       encoder_weights=str(args.encoder_weights) if args.encoder_weights else None,
                       cell_labels=str(args.cell_labels) if args.cell_labels else None,
                       dense_window=args.dense_window, init_from=str(args.init) if args.init else None,
                       init_standardisation=args.init_standardisation,
                       freeze_encoder_epochs=args.freeze_encoder_epochs, mosaic_bags=args.mosaic_bags,
                       mosaic_fraction=mosaic_fraction(args, model_family),
                       labels=str(args.labels) if args.labels else None,
                       split_file=str(args.split_file) if args.split_file else None,
                       negative_cell_weight=args.negative_cell_weight, topk_cells=args.topk_cells,
                       topk_weight=args.topk_weight, pseudo_label_weight=args.pseudo_label_weight)


def _print_summary(args: argparse.Namespace, family: str, metrics: dict) -> None:
    from hpa_cells.devices import device_line

    trained_on = metrics["trained_on"]
    print(f"\nModel folder: {args.out} ({family} family)")
    processes = trained_on["world_size"]
    print(f"  {device_line(trained_on['device']['device'])}, {trained_on['precision']}"
          + (f"; {processes} processes (torch DDP), global batch {trained_on['global_batch_size']} bags"
             if processes > 1 else ""))
    if args.init is not None:
        print(f"  fine-tuned from {args.init} (input standardisation: {args.init_standardisation}; encoder frozen "
              f"for {args.freeze_encoder_epochs} epoch(s))")
    print(f"  best epoch {metrics['best_epoch']} of {metrics['epochs_run']}; validation loss {metrics['val_loss']:.4f}")
    print(f"  validation macro F1 {metrics['val_macro_f1']:.3f} with fitted thresholds "
          f"({metrics['val_macro_f1_at_0.5']:.3f} at 0.5)")
    for entry in metrics.get("self_training", {}).get("per_round", [])[1:]:
        counts = entry["pseudo_labels"]
        print(f"  self-training round {entry['round']}: pseudo-labels for {counts['cells']} cells "
              f"({counts['positive_entries']} positive, {counts['unknown_entries']} unknown (cell, class) entries; "
              f"the rest negative), {entry['folder']}")
    print(f"  {metrics['n_train_images']} training / {metrics['n_val_images']} validation images; "
          f"{metrics['train_seconds_this_run']:.0f} s training, {metrics['train_images_per_second']} images/s, "
          f"{metrics['train_cells_per_second']} cells/s")


def _check_encoder_names(args: argparse.Namespace) -> None:
    """UnknownEncoderError for an encoder name the chosen family cannot build (before any cache is read)."""
    from mil.encoders import check_dense_encoder_name, check_encoder_name

    if args.init is not None:
        return  # the folder's architecture; options given must agree with it (checked by training)
    if args.family == "dense":
        check_dense_encoder_name(args.dense_encoder)
    else:
        check_encoder_name(args.encoder)


def _problem_with_inputs(args: argparse.Namespace) -> str | None:
    """A missing cache or label file, as an error line."""
    if not args.cache.is_file():
        return f"cell cache not found: {args.cache}" if not args.cache.is_dir() else \
            f"--cache {args.cache} is a folder; give the cell cache file (cells.h5)"
    if args.labels is not None and not args.labels.is_file():
        return f"--labels {args.labels}: no such file"
    return None


def _user_errors() -> tuple[type[BaseException], ...]:
    """The errors that mean bad input (printed as one line, exit 2), never a bug."""
    from hpa_cells.cache import CellCacheError
    from hpa_cells.checkpoints import CheckpointError
    from hpa_cells.devices import DeviceError
    from hpa_cells.labels import LabelFileError
    from mil.cell_labels import CellLabelError
    from mil.config import ConfigError
    from mil.encoders import EncoderWeightsError
    from mil.model_files import ModelFolderError
    from mil.mosaics import MosaicDrawError
    from mil.pseudo_labels import PseudoLabelError
    from mil.training import InitFolderError
    from mil.training.config import TrainingError
    from mil.training.splits import SplitFileError

    return (CellCacheError, CheckpointError, LabelFileError, CellLabelError, ConfigError, EncoderWeightsError,
            ModelFolderError, InitFolderError, TrainingError, SplitFileError, DeviceError, MosaicDrawError,
            PseudoLabelError)


def _check_and_configure(args: argparse.Namespace, argv: list[str] | None, prog: str | None) -> tuple:
    """(model config, training config, None) ready to train, or (None, None, the error line)."""
    problem = _problem_with_inputs(args)
    if problem is not None:
        return None, None, problem
    explicit = _explicit_options(argv, prog)
    try:
        _check_encoder_names(args)
        model_config = _fine_tune_config(args, explicit) if args.init else _requested_config(args)
        problem = _check_options(args, explicit, model_config)
        return ((model_config, _train_config(args, model_config.family), None) if problem is None
                else (None, None, problem))
    except (*_user_errors(), ValueError) as err:
        return None, None, str(err)


def _train(args: argparse.Namespace, model_config, train_config) -> tuple[dict | None, str | None, int]:
    """Train as one process, or as one rank of torchrun's processes: (metrics, None, rank) or (None, the error
    line, rank). Ranks other than 0 log warnings only."""
    import logging

    from mil.training import train_model
    from mil.training.distributed import start_process_group, stop_process_group

    rank = 0
    try:
        ranks = start_process_group(args.device)
        rank = ranks.rank
        if not ranks.main:
            logging.getLogger().setLevel(logging.WARNING)
        rounds = self_training_rounds(args, model_config)
        if rounds:
            return _self_train(args, model_config, train_config, rounds), None, rank
        return train_model(args.cache, args.out, model_config, train_config, overwrite=args.overwrite), None, rank
    except _user_errors() as err:
        return None, str(err), rank
    finally:
        stop_process_group()


def self_training_rounds(args: argparse.Namespace, model_config) -> int:
    """The self-training rounds this run trains: --self-training-rounds, where `auto` is the default recipe's
    (`mil.self_training.DEFAULT_ROUNDS`) for a crop-family run from image labels, else 0; fine-tuning (--init)
    keeps 0, the recipe that scored best on real fields."""
    from mil.self_training import DEFAULT_ROUNDS

    if args.self_training_rounds != "auto":
        return int(args.self_training_rounds)
    plain = model_config.family == "crop" and args.cell_labels is None and args.init is None
    return DEFAULT_ROUNDS if plain else 0


def _self_train(args: argparse.Namespace, model_config, train_config, rounds: int) -> dict:
    """The MIL model, then `rounds` self-training rounds (`mil.self_training`)."""
    from mil.pseudo_labels import PseudoLabelRule
    from mil.self_training import train_with_self_training

    rule = PseudoLabelRule(args.pseudo_positive_ratio, args.pseudo_negative_ratio)
    return train_with_self_training(args.cache, args.out, model_config, train_config, rounds, rule,
                                    overwrite=args.overwrite)


def main(argv: list[str] | None = None, *, prog: str | None = None) -> int:
    """Run `train` with `argv` (default: sys.argv[1:]); 0 on success, 2 for bad input. Under torchrun every
    process runs this; rank 0 prints the summary, and a rank that fails says which it is."""
    args = build_parser(prog).parse_args(argv)
    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    model_config, train_config, problem = _check_and_configure(args, argv, prog)
    metrics, rank = None, 0
    if problem is None:
        metrics, problem, rank = _train(args, model_config, train_config)
    if problem is not None:
        print(f"error{f' (rank {rank})' if rank else ''}: {problem}", file=sys.stderr)
        return 2
    if rank == 0:
        _print_summary(args, model_config.family, metrics)
    return 0
