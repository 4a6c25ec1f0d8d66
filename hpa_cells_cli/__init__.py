"""The command-line layer of hpa-cells: one module per command, each with `build_parser()` and `main(argv)`.

The top layer: it may import `hpa_cells`, `segmentation` and `mil`; nothing imports it but `scripts/`,
`benchmarks/` and the tests. Importing a command module is cheap (argparse only): every heavy library is
imported inside `main` after the options are parsed, so `--help` is instant.

Run a command as `hpa-cells COMMAND ...` (the console command installed by pyproject.toml), as
`python -m hpa_cells_cli COMMAND ...`, or through its documented thin wrapper `python scripts/NAME.py ...`.
"""
