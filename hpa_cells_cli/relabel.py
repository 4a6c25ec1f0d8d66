"""Replace the image-level labels stored in a cell cache by those of a label file, without re-segmenting.

  python scripts/relabel.py --cache cells.h5 --labels CSV

Labels are data, not part of segmentation: a corrected label file (2018 `Id,Target` or 2021 `ID,Label`) updates
the labels of every image of the cache it names, and prints how many images' labels changed. Images the file
does not name keep their labels. The cache is rewritten crash-safely (a new copy replaces it whole, so the
folder needs about the cache's size free); `segment.py --labels` on an existing cache does the same.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The command's options; `prog` names it in the usage line."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, required=True, help="the cell cache to relabel (cells.h5)")
    parser.add_argument("--labels", type=Path, required=True, help="label file, 2018 Id,Target or 2021 ID,Label")
    return parser


def main(argv: list[str] | None = None, *, prog: str | None = None) -> int:
    """Run `relabel` with `argv` (default: sys.argv[1:]); 0 on success, 2 for bad input or an unwritable cache."""
    args = build_parser(prog).parse_args(argv)
    from hpa_cells.cache import CellCache, CellCacheError, CellCacheWriter
    from hpa_cells.labels import LabelFileError, read_labels

    try:
        labels = read_labels(args.labels)
        with CellCacheWriter.for_existing(args.cache) as writer:
            writer.update_labels(labels)
        with CellCache(args.cache) as cache:
            image_ids = set(cache.image_ids)
    except (LabelFileError, CellCacheError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # disk full or read-only while rewriting: the old cache is kept
        print(f"error: cannot write {err.filename or args.cache}: {err.strerror or err}; {args.cache} is unchanged",
              file=sys.stderr)
        return 2
    named = image_ids & set(labels)
    print(f"Relabelled {args.cache} from {args.labels}: labels changed for {writer.labels_changed} of "
          f"{len(image_ids)} images")
    print(f"  label file rows not in the cache: {len(set(labels) - image_ids)}; cache images not in the label "
          f"file (labels kept): {len(image_ids - named)}")
    return 0
