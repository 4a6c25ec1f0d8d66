#!/usr/bin/env bash
# The GPU check in one command, for the GPU machine (see benchmarks/gpu/README.md):
#
#   benchmarks/gpu/run_gpu_check.sh [--quick] [--out DIR] [--no-install] [gpu_check.py options: --device,
#                                   --budget, --only STAGE..., --skip STAGE..., --work DIR]
#
# 1. installs the wheels carried in .whl/ (made by prepare_wheels.sh) into /tmp/site, as the device tool's README
#    says, unless --no-install or there are none;
# 2. runs benchmarks/gpu/gpu_check.py: the GPU tests and benchmarks within the budget (470 s from here by
#    default), writing check.log, results.json, summary.md and nvidia-smi.txt into --out (default: $OUT when set,
#    else runs/gpu_check).
# $PYTHON picks the interpreter (default: python3, the one holding torch on the GPU machine).
set -uo pipefail
export GPU_CHECK_STARTED
GPU_CHECK_STARTED=$(date +%s.%N)
cd "$(dirname "$0")/../.."
out="${OUT:-runs/gpu_check}"
install=1
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --out=*) out="${1#--out=}"; shift ;;
    --no-install) install=0; shift ;;
    *) args+=("$1"); shift ;;
  esac
done
PYTHON="${PYTHON:-python3}"
mkdir -p "$out"
if [ "$install" = 1 ] && compgen -G ".whl/*.whl" > /dev/null; then
  echo "installing $(ls .whl/*.whl | wc -l) carried wheels into /tmp/site"
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      .whl/*.whl 2>&1 | tee -a "$out/check.log" || { echo "error: installing the wheels failed" >&2; exit 3; }
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
exec "$PYTHON" benchmarks/gpu/gpu_check.py --out "$out" ${args[@]+"${args[@]}"}
