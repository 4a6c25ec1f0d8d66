"""Replace the labels stored in a cell cache by a label file's: `hpa-cells relabel`.

The code, its options and --help live in hpa_cells_cli/relabel.py.
"""

from hpa_cells_cli.relabel import main

if __name__ == "__main__":
    raise SystemExit(main())
