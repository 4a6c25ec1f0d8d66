"""Score a prediction folder (image F1, cell mAP): `hpa-cells evaluate`.

The code, its options and --help live in hpa_cells_cli/evaluate.py.
"""

from hpa_cells_cli.evaluate import main

if __name__ == "__main__":
    raise SystemExit(main())
