"""Predict image labels and per-cell localization (a model or an ensemble): `hpa-cells predict`.

The code, its options and --help live in hpa_cells_cli/predict.py.
"""

from hpa_cells_cli.predict import main

if __name__ == "__main__":
    raise SystemExit(main())
