#!/usr/bin/env bash
# The GPU check (issue 4): on a machine with an NVIDIA GPU and cupy it installs nothing; it runs the
# GPU tests, `ckpt run` and `ckpt plan` on cuda as a user would, then the benchmark table and the
# PyTorch comparison (scripts/bench_gpu.py). A failing part is reported and the rest still runs;
# the exit code is 1 if any part failed. A few minutes on one GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 -c "import cupy, sys; sys.exit(0 if cupy.cuda.runtime.getDeviceCount() > 0 else 1)" 2>/dev/null \
    || { echo "gpu_check: needs cupy and an NVIDIA GPU" >&2; exit 2; }
python3 -c "import cupy, numpy, torch; d = cupy.cuda.runtime.getDeviceProperties(0)
print('gpu_check:', d['name'].decode(), '| cupy', cupy.__version__, '| numpy', numpy.__version__, '| torch', torch.__version__)" \
    2>/dev/null || true
failed=()
part() {  # part NAME COMMAND...: run, time and record one part
    echo "== $1"
    local t0=$SECONDS
    "${@:2}" || failed+=("$1")
    echo "($1: $((SECONDS - t0)) s)"
}
part "GPU tests" python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py tests/test_conv_speedpath.py
part "ckpt run on cuda" python3 -m ckpt run configs/gpt_small.yaml --device cuda --strategy budget --memory-budget 0.7x
part "ckpt plan with costs measured on cuda" python3 -m ckpt plan configs/gpt_small.yaml --device cuda --memory-budget 0.7x
part "benchmark" python3 scripts/bench_gpu.py --steps 10
if ((${#failed[@]})); then
    echo "gpu_check: FAILED: ${failed[*]}"
    exit 1
fi
echo "gpu_check: all parts passed"
