"""Merge shard caches into one cell cache: the end of a job array of `segment.py --shard I/N` runs.

  python scripts/merge_caches.py --out cells.h5 SHARD [SHARD ...] [--labels CSV] [--remove-shards]

Each SHARD is a shard cache file (`cells.h5.shards/shard-0-of-8.h5`) or a folder of them (`cells.h5.shards`).
The merged cache is identical, cell for cell, to the cache one process would have written from the same fields
with the same options: images already in --out first, then the shards' images in image id order, the skipped table
in image id order; only the created / modified time stamps differ. --out is created, or extended when it exists.

Refused, with the shard and the reason: shards made with other settings than --out or than each other (crop size,
segmenter, model, any option; the setting is named), an image in two shards with different content, a shard
still being written. The merge is crash-safe (a new copy replaces --out whole, so its folder needs about the size
of --out plus the shards free) and can simply be run again: images already in --out are not added twice.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The command's options; `prog` names it in the usage line."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("shards", type=Path, nargs="+", metavar="SHARD",
                        help="shard cache files, or folders of them (e.g. cells.h5.shards)")
    parser.add_argument("--out", type=Path, required=True, help="the merged cell cache (created or extended)")
    parser.add_argument("--labels", type=Path,
                        help="label file, 2018 Id,Target or 2021 ID,Label: also replaces the labels of the images "
                             "--out holds already, as segment.py --labels does (optional)")
    parser.add_argument("--remove-shards", action="store_true",
                        help="delete the shard caches (and their folder, once empty) after the merge")
    return parser


def shard_paths(given: list[Path]) -> list[Path]:
    """The shard caches named on the command line: files as given, folders replaced by the caches inside them
    (sorted by name); FileNotFoundError naming a path that is neither."""
    from hpa_cells.cache.shards import shard_caches_in

    paths: list[Path] = []
    for path in given:
        if path.is_dir() and not path.name.endswith(".journal"):
            inside = shard_caches_in(path)
            if not inside:
                raise FileNotFoundError(f"shard folder {path} holds no shard cache (*.h5)")
            paths += inside
        elif path.is_file() or path.with_name(path.name + ".journal").is_dir():
            paths.append(path)
        else:
            raise FileNotFoundError(f"shard cache {path} does not exist")
    return paths


def main(argv: list[str] | None = None, *, prog: str | None = None) -> int:
    """Run `merge-caches` with `argv` (default: sys.argv[1:]); 0 on success, 2 for bad input (missing or
    mismatched shards, a locked cache) or a disk that cannot take the merge."""
    args = build_parser(prog).parse_args(argv)
    from hpa_cells.cache import CellCacheError
    from hpa_cells.cache.merging import merge_caches
    from hpa_cells.cache.shards import remove_shard_cache
    from hpa_cells.labels import LabelFileError, read_labels

    try:
        shards = shard_paths(args.shards)
        labels = read_labels(args.labels) if args.labels else None
        args.out.parent.mkdir(parents=True, exist_ok=True)
        summary = merge_caches(args.out, shards, labels=labels)
    except (FileNotFoundError, LabelFileError, CellCacheError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # disk full or read-only while writing the merged copy: --out is unchanged
        print(f"error: cannot write {err.filename or args.out}: {err.strerror or err}; {args.out} and the shards "
              "are unchanged", file=sys.stderr)
        return 2
    print(f"Merged {len(shards)} shard cache(s) into {args.out}")
    for line in summary.lines():
        print("  " + line)
    if args.remove_shards:
        folders = {shard.parent for shard in shards}
        for shard in shards:
            remove_shard_cache(shard)
        for folder in folders:
            if folder.is_dir() and folder.name.endswith(".shards") and not any(folder.iterdir()):
                folder.rmdir()
        print(f"  removed the {len(shards)} shard cache(s)")
    return 0
