"""Segment HPA fields into cells and cache every cell's four-channel crop in one HDF5 file.

  python scripts/segment.py --images DIR [--labels CSV] --out cells.h5 [--segmenter cellpose|watershed|masks|whole-field]
                            [--model NAME|PATH] [--working-size auto|N] [--crop-size N] [--export-masks DIR]
                            [--limit N] [--strict] [--retry-skipped] [--scaling full_range|per_image_max]
                            [--device auto|cpu|cuda] [--postprocess-workers N] [--network-batch-size M]
                            [--scheduler local:N|tcp://HOST:PORT | --shard I/N]

Rerunning the same command resumes: images already in the cache are skipped. With no arguments it runs on the
embedded default (a small synthetic set generated into demo_output/) and says so.

One bad field never stops a run: a field that cannot be read, segmented or cropped (missing or unreadable
channel files, a channel in two formats, a field too small to segment) is recorded in the cache's skipped table
with the reason and its files, and the run goes on (--strict stops at it). A rerun tries a skipped field again
when its files changed, or every skipped field with --retry-skipped. --labels on an existing cache also updates
the labels of the images already in it (and says how many changed); `hpa-cells relabel` does only that.

Working size (--working-size auto, the default): each field is resized so its cells have about the same pixel
size as in a 2048 px field shrunk to 512 px, whatever the layout: 2018 Kaggle 512 px fields stay 512 px;
full-resolution fields (the 2021 data, HPA website downloads) are shrunk 4x (2048 -> 512, 3072 -> 768), and
Cellpose assumes the same object sizes in px for all of them. A number N instead resizes every field's longer
side to N px and scales the assumed object sizes with N (right when every field spans the same field of view).
The sizes chosen are printed in the summary; the cache records the rule, and each image's working size.

On a GPU (README: "On a GPU"): --postprocess-workers N runs each field's CPU work (flow dynamics, cells grown from
nuclei, QC) in N processes while the network runs the next batch, and --network-batch-size M caps the fields of
one network pass; neither changes the cache (it stays written by this one process).

Many fields (README: "Segmenting many fields"): --scheduler local:N spreads the fields over N worker processes
here, --scheduler tcp://HOST:PORT over the workers of a running Dask scheduler (e.g. on SLURM with dask-jobqueue);
each worker writes shard caches in OUT.shards/, merged into OUT at the end. --shard I/N segments one shard of the
folder (for job arrays without Dask); `hpa-cells merge-caches --out OUT OUT.shards` merges the shards. Either way
the merged cache is identical, cell for cell, to a single-process run, and a rerun of the same command after a
crash segments only the fields still missing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hpa_cells_cli.arguments import finite_number, whole_number

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DIR = REPO / "demo_output"


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The command's options; `prog` names it in the usage line (default: the running file's name)."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, help="folder of {id}_{red,green,blue,yellow}.{png,jpg,tif} files "
                        "(default: the demo's synthetic set, generated if missing)")
    parser.add_argument("--labels", type=Path, help="label file, 2018 Id,Target or 2021 ID,Label (optional)")
    parser.add_argument("--out", type=Path, help="the HDF5 cell cache to create or extend "
                        "(default: demo_output/cells.h5 with the demo data)")
    parser.add_argument("--segmenter", choices=("cellpose", "watershed", "masks", "whole-field"),
                        default="cellpose",
                        help="segmentation method; 'masks' reads {id}_cells.png / {id}_nuclei.png from --masks "
                             "instead of segmenting; 'whole-field' makes each image one instance (the image-level "
                             "baseline; use a larger --crop-size) (default: %(default)s)")
    parser.add_argument("--masks", type=Path, metavar="DIR",
                        help="with --segmenter masks: folder of {id}_cells / {id}_nuclei instance masks "
                             "(.png/.tif, any resolution with the image's aspect ratio; default: --images)")
    parser.add_argument("--model", default="bundled",
                        help="Cellpose cell model: 'bundled', a Cellpose built-in name (cyto3, cyto2, cyto) or a "
                             "weights file (default: %(default)s)")
    parser.add_argument("--nucleus-model", default="bundled",
                        help="Cellpose nucleus model: 'bundled', 'nuclei' or a weights file (default: %(default)s)")
    parser.add_argument("--cell-assembly", choices=("nuclei", "flows"), default="nuclei",
                        help="cellpose: how cells are made from the cell network's outputs: 'nuclei' grows one cell "
                             "from each nucleus (HPA's convention; closer to the real reference masks), 'flows' follows "
                             "Cellpose's flows (closer on synthetic fields; cells need no nucleus); see BENCHMARKS.md "
                             "(default: %(default)s)")
    parser.add_argument("--diameter-tolerance", type=float, default=0, metavar="F",
                        help="cellpose: re-segment an image at its own measured nucleus (and, with --cell-assembly "
                             "flows, cell) diameter when it is more than F times off the default one, e.g. 1.25; 0 = "
                             "never, one pass (with --cell-assembly flows, 1.25 gains about 0.02 AP at twice the time; "
                             "see BENCHMARKS.md) (default: %(default)s)")
    parser.add_argument("--working-size", "--size", type=working_size_option, default="auto", metavar="auto|N",
                        help="working size: 'auto' picks one per field so cells have a similar pixel size (512 px "
                             "fields kept, full-resolution 2048/3072 px fields shrunk 4x); N resizes every field's "
                             "longer side to N px (default: %(default)s)")
    parser.add_argument("--crop-size", type=whole_number(MIN_CROP_SIZE), default=128,
                        help=f"side of the per-cell crops in px, at least {MIN_CROP_SIZE} (default: %(default)s)")
    parser.add_argument("--keep-neighbours", action="store_true",
                        help="keep other cells' pixels inside each crop (default: they are zeroed)")
    parser.add_argument("--export-masks", type=Path, metavar="DIR",
                        help="also write {id}_cells.png / {id}_nuclei.png 16-bit masks at the original resolution")
    parser.add_argument("--limit", type=whole_number(0), help="segment at most this many new images (>= 0)")
    parser.add_argument("--batch-size", type=whole_number(1), default=8,
                        help="images read and segmented together: one network pass per shape, unless "
                             "--network-batch-size splits it (default: %(default)s)")
    parser.add_argument("--strict", action="store_true",
                        help="stop at the first field that would be skipped (unreadable, empty, failing)")
    parser.add_argument("--retry-skipped", action="store_true",
                        help="try every field skipped by an earlier run again (default: only those whose files "
                             "changed)")
    parser.add_argument("--scaling", choices=("full_range", "per_image_max"), default="full_range",
                        help="16-bit intensity scaling (data/README.md): full_range maps 0-65535 to 0-255; "
                             "per_image_max maps each channel's maximum to 255, for 12-bit data in 16-bit files "
                             "(default: %(default)s)")
    _add_cellpose_device_options(parser)
    _add_spread_options(parser)
    return parser


def _add_cellpose_device_options(parser: argparse.ArgumentParser) -> None:
    """--device, --postprocess-workers, --network-batch-size (the Cellpose segmenter's; the cache does not depend on
    them)."""
    group = parser.add_argument_group("where Cellpose runs, keeping a GPU fed (README: On a GPU)")
    group.add_argument("--device", default="auto",
                       help="torch device for Cellpose: auto (cuda when a GPU is visible, else cpu), cpu, cuda, "
                            "cuda:N; with --scheduler each worker resolves it on its own machine; printed in the "
                            "summary, not recorded in the cache (default: %(default)s)")
    group.add_argument("--postprocess-workers", type=whole_number(0), default=0, metavar="N",
                       help="CPU processes that run each field's post-processing (flow dynamics, cells grown from "
                            "nuclei, QC) while the network runs the next batch; e.g. cores - 1 on a GPU machine; 0 = "
                            "in this process; not with --scheduler (Dask's worker processes cannot start processes: "
                            "use more Dask workers); the cache is the same either way (default: %(default)s)")
    group.add_argument("--network-batch-size", type=whole_number(1), metavar="M",
                       help="at most M fields per network pass (e.g. 32 on a GPU, with --batch-size 64); the cache "
                            "is the same either way (default: every same-shape field of a --batch-size batch)")


def _add_spread_options(parser: argparse.ArgumentParser) -> None:
    """--scheduler, --chunk-size, --keep-shards, --connect-timeout, --shard."""
    spread = parser.add_argument_group("spreading the work (README: Segmenting many fields)")
    spread.add_argument("--scheduler", type=scheduler_option, metavar="local:N|tcp://HOST:PORT",
                        help="segment on Dask workers: local:N starts N single-thread worker processes here; an "
                             "address uses a running scheduler (e.g. started by dask-jobqueue); each worker writes "
                             "shard caches in OUT.shards/, merged into --out at the end")
    spread.add_argument("--chunk-size", type=whole_number(1), metavar="N",
                        help="with --scheduler: fields per task (default: about 4 tasks per worker, at most 32)")
    spread.add_argument("--keep-shards", action="store_true",
                        help="with --scheduler: keep the shard caches after merging them (default: deleted)")
    spread.add_argument("--connect-timeout", type=finite_number(above=0), default=30.0, metavar="S",
                        help="with --scheduler: seconds to wait for the scheduler and a first worker "
                             "(default: %(default)s)")
    spread.add_argument("--shard", type=shard_option, metavar="I/N",
                        help="segment only shard I of N of the folder (a field's shard depends on its id alone) "
                             "into OUT.shards/shard-I-of-N.h5, for job arrays; then hpa-cells merge-caches --out "
                             "OUT OUT.shards")


def scheduler_option(text: str):
    """--scheduler: local:N or a scheduler address (argparse reports anything else)."""
    from segmentation.distributed import SchedulerSpec

    try:
        return SchedulerSpec.parse(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def shard_option(text: str):
    """--shard: I/N with 0 <= I < N (argparse reports anything else)."""
    from segmentation.sharding import ShardSpec

    try:
        return ShardSpec.parse(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def working_size_option(text: str) -> int | str:
    """--working-size: 'auto' or a positive number of px (argparse reports anything else)."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a positive number of px, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a positive number of px, got {text!r}")
    return value


MIN_CROP_SIZE = 4
"""The smallest crop side the cache takes (`hpa_cells.crops.CropConfig`)."""


class OptionError(ValueError):
    """An option value argparse cannot check by itself (the command prints it and exits with code 2)."""


def build_segmenter(args: argparse.Namespace):
    """The segmenter the options choose (its library imported only now), on the device --device resolves to here
    (`hpa_cells.devices.resolve_device`: with --scheduler this runs on each worker). Raises OptionError for a bad
    --diameter-tolerance, DeviceError for cuda without a GPU, and the segmenter's own errors for a missing or
    unreadable model or mask folder."""
    if args.segmenter == "cellpose":
        from segmentation.cellpose_segmenter import (
            CELL_DIAMETER_AT_512,
            NUCLEUS_DIAMETER_AT_512,
            CellposeSegmenter,
            CellposeSettings,
        )

        tolerance = args.diameter_tolerance
        if tolerance != 0 and not 1 < tolerance < float("inf"):  # NaN fails too
            raise OptionError(f"--diameter-tolerance must be 0 (off) or > 1, got {args.diameter_tolerance}")
        # auto: every field is at the 512 px reference scale whatever its working size, so the object sizes are too
        fixed = ({"cell_diameter": CELL_DIAMETER_AT_512, "nucleus_diameter": NUCLEUS_DIAMETER_AT_512}
                 if args.working_size == "auto" else {})
        from hpa_cells.devices import resolve_device

        return CellposeSegmenter(CellposeSettings(
            cell_model=args.model, nucleus_model=args.nucleus_model, device=resolve_device(args.device),
            diameter_tolerance=args.diameter_tolerance or None, cell_assembly=args.cell_assembly, **fixed),
            postprocess_workers=args.postprocess_workers, network_batch_size=args.network_batch_size)
    if args.segmenter == "whole-field":
        from segmentation.whole_field import WholeFieldSegmenter

        return WholeFieldSegmenter()
    if args.segmenter == "masks":
        from segmentation.mask_folder import MaskFolderSegmenter

        return MaskFolderSegmenter(args.masks or args.images)
    from segmentation.watershed import WatershedSegmenter

    return WatershedSegmenter()


def disk_error_message(err: OSError, out: Path) -> str:
    """The one-line error for a disk that cannot take the cache's writes (full, over quota, read-only)."""
    from hpa_cells.cache import format_bytes, merge_space_needed

    where = err.filename or out
    return (f"cannot write {where}: {err.strerror or err}; the cache {out} and its journal are kept as they were "
            f"for a resume: free space (the journal merge needs about {format_bytes(merge_space_needed(out))} free "
            f"in {out.parent}, plus room for the fields still to segment) and rerun the same command")


def _defaults(args: argparse.Namespace) -> str | None:
    """Fill in the embedded default (no --images); the error message when the options do not fit."""
    if args.images is None:
        from hpa_cells.synthetic.dataset import SyntheticConfig, write_dataset

        args.images = DEFAULT_DIR / "synthetic"
        args.labels = args.labels or args.images / "train.csv"
        args.out = args.out or DEFAULT_DIR / "cells.h5"
        print(f"No --images given: using the embedded default, a synthetic set in {args.images}")
        write_dataset(args.images, 24, SyntheticConfig(seed=0, size=512, balanced=True), show_progress=True)
    elif args.out is None:
        return "--out is required with --images"
    if args.out.is_dir():
        return f"--out {args.out} is a folder, not a cache file (give a file such as {args.out / 'cells.h5'})"
    return None


def _speed_problem(args: argparse.Namespace) -> str | None:
    """The error message when --postprocess-workers or --network-batch-size do not fit the other options."""
    given = [name for name, value in (("--postprocess-workers", args.postprocess_workers),
                                      ("--network-batch-size", args.network_batch_size)) if value]
    if given and args.segmenter != "cellpose":
        return (f"{' and '.join(given)} {'are' if len(given) > 1 else 'is'} for --segmenter cellpose (its network "
                f"passes and their post-processing); --segmenter {args.segmenter} has neither")
    if args.postprocess_workers and args.scheduler is not None:
        return ("--postprocess-workers does not go with --scheduler: Dask's worker processes cannot start processes of "
                "their own; spread the CPU work over more Dask workers instead (--network-batch-size is fine)")
    return None


def _spread_problem(args: argparse.Namespace) -> str | None:
    """The error message when the options for spreading the work do not fit together."""
    if args.shard is not None and args.scheduler is not None:
        return ("--shard and --scheduler do not go together: --shard I/N is for job arrays without Dask, --scheduler "
                "spreads the whole folder over Dask workers")
    if args.scheduler is None and (args.chunk_size is not None or args.keep_shards):
        return f"{'--chunk-size' if args.chunk_size is not None else '--keep-shards'} needs --scheduler"
    return None


def segment_job(args: argparse.Namespace):
    """The SegmentJob of the options."""
    from hpa_cells.crops import CropConfig
    from segmentation.segment_to_cache import SegmentJob

    return SegmentJob(images_dir=args.images, out_path=args.out, labels_path=args.labels, working_size=args.working_size,
                      crop=CropConfig(crop_size=args.crop_size, zero_other_cells=not args.keep_neighbours,
                                      # the whole field needs no context margin around it
                                      **({"margin_fraction": 0.0} if args.segmenter == "whole-field" else {})),
                      export_masks_dir=args.export_masks, limit=args.limit, strict=args.strict,
                      batch_size=args.batch_size, retry_skipped=args.retry_skipped, scaling=args.scaling)


def _note_leftover_shards(out: Path) -> None:
    """Say so when OUT has shard caches waiting to be merged (a single-process run does not read them)."""
    from hpa_cells.cache.shards import shard_caches_in, shards_dir_of

    waiting = shard_caches_in(shards_dir_of(out))
    if waiting:
        print(f"note: {shards_dir_of(out)} holds {len(waiting)} shard cache(s) not merged into {out} (a distributed "
              f"run or job array that did not finish); this run does not read them: rerun with --scheduler, or "
              f"merge them: hpa-cells merge-caches --out {out} {shards_dir_of(out)}", file=sys.stderr)


def _run_here(args: argparse.Namespace, job) -> int:
    """Segment in this process: the whole folder into --out, or one shard of it into OUT.shards/."""
    from dataclasses import replace

    from segmentation.distributed_worker import segmenter_device_line
    from segmentation.segment_to_cache import segment_folder

    segmenter = build_segmenter(args)
    try:
        if args.shard is None:
            _note_leftover_shards(args.out)
            summary = segment_folder(job, segmenter)
            print(f"\nSegmented {args.images} with {segmenter.name} -> {args.out}")
        else:
            shard_out = args.shard.cache_path(args.out)
            shard_out.parent.mkdir(parents=True, exist_ok=True)
            summary = segment_folder(replace(job, out_path=shard_out), segmenter, select=args.shard.holds,
                                     done_in=(args.out,))
            print(f"\nSegmented shard {args.shard} of {args.images} with {segmenter.name} -> {shard_out}")
    finally:
        if hasattr(segmenter, "close"):  # its worker processes (a --strict stop or an error included)
            segmenter.close()
    for line in [*summary.lines(), segmenter_device_line(segmenter), *_speed_lines(segmenter)]:
        print("  " + line)
    if args.shard is not None:
        print(f"  when every shard is done: hpa-cells merge-caches --out {args.out} {shard_out.parent}")
    return 0


def _speed_lines(segmenter) -> list[str]:
    """The summary's lines on post-processing workers and network passes, when the options asked for them."""
    lines = []
    workers = getattr(segmenter, "postprocess_workers", 0)
    if workers:
        lines.append(f"post-processing: {workers} worker process{'es' if workers != 1 else ''}")
    network = getattr(segmenter, "network_batch_size", None)
    if network:
        lines.append(f"network passes: at most {network} field{'s' if network != 1 else ''} each")
    return lines


def _run_distributed(args: argparse.Namespace, job) -> int:
    """Segment on the Dask workers of --scheduler, then merge their shards into --out."""
    import functools

    from segmentation.distributed import DistributedOptions, segment_distributed

    options = DistributedOptions(args.scheduler, args.chunk_size, args.keep_shards, args.connect_timeout)
    report = segment_distributed(job, functools.partial(build_segmenter, args), options)
    print(f"\nSegmented {args.images} with {args.segmenter} on {report.workers} Dask worker(s) -> {args.out}")
    for line in report.lines():
        print("  " + line)
    return 0


def _absolute_paths(args: argparse.Namespace) -> None:
    """Make the paths the workers open absolute (a worker may start in another folder, or on another machine)."""
    for name in ("images", "out", "labels", "masks", "export_masks"):
        if getattr(args, name) is not None:
            setattr(args, name, getattr(args, name).absolute())
    for name in ("model", "nucleus_model"):
        if Path(getattr(args, name)).is_file():
            setattr(args, name, str(Path(getattr(args, name)).absolute()))


def main(argv: list[str] | None = None, *, prog: str | None = None) -> int:
    """Run `segment` with `argv` (default: sys.argv[1:]); 0 on success, 1 for a --strict stop, 2 for bad input,
    an unreachable scheduler, a failed distributed run (its finished fields kept for a rerun) and for a disk that
    cannot take the cache (full or read-only)."""
    args = build_parser(prog).parse_args(argv)
    problem = _speed_problem(args) or _defaults(args) or _spread_problem(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2

    from hpa_cells.cache import CellCacheError
    from hpa_cells.devices import DeviceError
    from hpa_cells.labels import LabelFileError
    from segmentation.cellpose_models import ModelFormatError, ModelNotFoundError
    from segmentation.mask_folder import MaskFileError
    from segmentation.segment_to_cache import StrictModeError

    args.out.parent.mkdir(parents=True, exist_ok=True)  # a new folder for the cache is fine
    if args.working_size == "auto":
        from hpa_cells.images import AUTO_WORKING_SIZE_RULE

        print(f"Working size: auto ({AUTO_WORKING_SIZE_RULE})")
    try:
        if args.scheduler is None:
            return _run_here(args, segment_job(args))
        from segmentation.distributed import DistributedRunError, SchedulerError

        _absolute_paths(args)
        try:
            return _run_distributed(args, segment_job(args))
        except (SchedulerError, DistributedRunError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    except StrictModeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except (ModelNotFoundError, ModelFormatError, MaskFileError, OptionError, DeviceError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, LabelFileError, CellCacheError) as err:  # bad paths, a locked or mismatched cache
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # the disk is full or read-only: the cache stays valid
        print(f"error: {disk_error_message(err, args.out)}", file=sys.stderr)
        return 2
