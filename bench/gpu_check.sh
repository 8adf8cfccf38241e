#!/usr/bin/env bash
# Check everything GPU-specific on this machine's CUDA GPU in a few minutes (bench/gpu_check.py; its
# arguments pass through, e.g. --only resume,speed-train or --device cpu --quick). On a machine without
# CUDA it says so in one line and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."
py=python3
if [ -x .venv/bin/python ]; then py=.venv/bin/python; fi
exec "$py" bench/gpu_check.py "$@"
