#!/usr/bin/env bash
# One prepared run for a lent GPU, at most about 8 minutes (3.5 on an H200): the CUDA tests, the per-tensor
# cost of a device summary, then the GPU benchmarks (record: plain, full capture, stats mode
# against its 1.10x target, raw write; replay on the device). Works from a plain checkout on a
# machine with CUDA torch, h5py, msgpack and triton: the checkout goes on PYTHONPATH, nothing
# is installed and textual is not needed. Everything is printed, and also kept in $OUT (the
# device tool's folder) or ./gpu-check when OUT is unset. Each part has its own time limit,
# so one that hangs cannot take the others' figures with it.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
keep="${OUT:-$PWD/gpu-check}"
mkdir -p "$keep"
exec > >(tee "$keep/gpu_check.log") 2>&1
part() { echo; echo "=== $1 ($(date +%T))"; }
part "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch, triton, h5py, numpy; print('torch', torch.__version__, 'triton', \
triton.__version__, 'h5py', h5py.__version__, 'numpy', numpy.__version__)"
df -h "${TMPDIR:-/tmp}" | tail -1
# the interpreter would stand in for the compiled kernels: make sure it is off
part "CUDA tests"
env -u TRITON_INTERPRET timeout 170 python3 -m pytest -q -m cuda -p no:cacheprovider \
    -rs --durations=5 tests/test_cuda.py
part "one device summary"
env -u TRITON_INTERPRET timeout 50 python3 bench/summary_kernels.py
part "record benchmark"
env -u TRITON_INTERPRET timeout 200 python3 bench/run_all.py --gpu --no-tools --skip replay,tui \
    --timeout 80 --json "$keep/record.json"
part "replay benchmark"
env -u TRITON_INTERPRET timeout 100 python3 bench/run_all.py --gpu --skip record,tui \
    --timeout 90 --json "$keep/replay.json"
part "done"
