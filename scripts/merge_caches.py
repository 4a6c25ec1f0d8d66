"""Merge shard caches (job arrays of `segment.py --shard I/N`) into one cell cache: `hpa-cells merge-caches`.

The code, its options and --help live in hpa_cells_cli/merge_caches.py.
"""

from hpa_cells_cli.merge_caches import main

if __name__ == "__main__":
    raise SystemExit(main())
