"""Draw per-cell localization maps and an HTML report: `hpa-cells maps`.

The code, its options and --help live in hpa_cells_cli/maps.py.
"""

from hpa_cells_cli.maps import main

if __name__ == "__main__":
    raise SystemExit(main())
