#!/usr/bin/env bash
# Download, on a machine with package access, every wheel the bare GPU machine lacks into .whl/ (git-ignored),
# and check that they and the working tree fit in what one device call carries (64 MiB).
#
#   benchmarks/gpu/prepare_wheels.sh [--dest DIR] [--limit-mib N] [--dry-run]
#
# Runs benchmarks/gpu/wheel_plan.py with the project's Python ($PYTHON, else .venv/bin/python, else python3): the
# wheels are pinned to the versions installed in that environment. Exit status 1 when the total is over the limit.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
exec "$PYTHON" benchmarks/gpu/wheel_plan.py "$@"
