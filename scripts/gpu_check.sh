#!/usr/bin/env bash
# The GPU check (issue 4): on a machine with an NVIDIA GPU and cupy, installs nothing, runs the GPU
# tests, then a short benchmark table and the PyTorch comparison. Finishes in a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 -c "import cupy, sys; sys.exit(0 if cupy.cuda.runtime.getDeviceCount() > 0 else 1)" 2>/dev/null \
    || { echo "gpu_check: needs cupy and an NVIDIA GPU" >&2; exit 2; }
python3 -m pytest -q -m gpu tests/test_gpu.py
python3 scripts/bench_gpu.py --steps 10
