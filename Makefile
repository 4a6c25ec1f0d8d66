# hpa-cells developer commands. `make demo` and `make test` set everything up first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.hpa-cells-installed

.PHONY: setup demo test test-all lint bench gpu-check-quick clean

setup: $(STAMP)

# Re-runs only when the dependency files change; a finished setup costs nothing.
$(STAMP): pyproject.toml constraints.txt .ci/system-deps
	@bash .ci/system-deps  # the napari extra's system libraries, only those missing (Debian, as root)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	@touch $(STAMP)

demo: setup
	$(PY) scripts/demo.py

# Default suite: everything except the `slow` and `gpu` tests; `real` tests skip with a reason without ../shared/data.
test: setup
	$(PY) -m pytest

test-all: setup
	$(PY) -m pytest --runslow

# Style (ruff) and the architecture rules (import cycles, layers, file and function length; see
# tests/architecture_rules.py). `make test` runs the architecture test too, as it lives in tests/.
lint: setup
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -p no:cacheprovider tests/test_architecture.py

bench: setup
	$(PY) benchmarks/run_all.py

# The GPU check's plumbing on this machine's CPU, with tiny sizes (minutes; benchmarks/gpu/README.md): the same
# stages and files as the one call on a GPU machine, no numbers to keep.
gpu-check-quick: setup
	PYTHON=$(PY) benchmarks/gpu/run_gpu_check.sh --quick --device cpu --no-install --out runs/gpu_check_quick \
		--work runs/gpu_check_quick_work

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info demo_output
