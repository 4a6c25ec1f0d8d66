"""The end-to-end demo on built-in data: `hpa-cells demo`.

The code, its options and --help live in hpa_cells_cli/demo.py.
"""

from hpa_cells_cli.demo import main

if __name__ == "__main__":
    raise SystemExit(main())
