"""`python -m hpa_cells_cli COMMAND ...`: the same as the `hpa-cells` console command."""

from hpa_cells_cli.main import main

raise SystemExit(main())
