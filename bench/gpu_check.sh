#!/usr/bin/env bash
# Check everything GPU-specific on this machine's CUDA GPU in a few minutes: with no arguments, the pytest
# tests marked `gpu` (tests/test_gpu.py, one per check of bench/gpu_check.py, with the figures' table at the
# end); with arguments, bench/gpu_check.py itself (e.g. --only resume,speed-train, or --device cpu --quick).
# On a machine without CUDA it says so in one line and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."
py=python3
if [ -x .venv/bin/python ]; then py=.venv/bin/python; fi
if [ $# -eq 0 ] && "$py" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  exec "$py" -m pytest -q -s -rA -m gpu tests/test_gpu.py
fi
exec "$py" bench/gpu_check.py "$@"
