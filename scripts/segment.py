"""Segment HPA fields into cells and cache every cell's crop: `hpa-cells segment`.

The code, its options and --help live in hpa_cells_cli/segment.py.
"""

from hpa_cells_cli.segment import main

if __name__ == "__main__":
    raise SystemExit(main())
