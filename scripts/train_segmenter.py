"""Train the bundled Cellpose models: `hpa-cells train-segmenter`.

The code, its options and --help live in hpa_cells_cli/train_segmenter.py.
"""

from hpa_cells_cli.train_segmenter import main

if __name__ == "__main__":
    raise SystemExit(main())
