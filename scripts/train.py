"""Train a MIL model on a cell cache from image labels: `hpa-cells train`.

The code, its options and --help live in hpa_cells_cli/train.py.
"""

from hpa_cells_cli.train import main

if __name__ == "__main__":
    raise SystemExit(main())
