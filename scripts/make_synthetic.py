"""Generate a synthetic HPA-like dataset with per-cell truth: `hpa-cells make-synthetic`.

The code, its options and --help live in hpa_cells_cli/make_synthetic.py.
"""

from hpa_cells_cli.make_synthetic import main

if __name__ == "__main__":
    raise SystemExit(main())
