#!/usr/bin/env bash
# One prepared run for a lent GPU, about 8 minutes: the CUDA tests, then the GPU benchmarks
# (stats mode against its 1.10x target, full capture, replay on the device). Works from a
# plain checkout on a machine with CUDA torch, h5py, msgpack and triton: the checkout goes on
# PYTHONPATH, nothing is installed and textual is not needed. Everything is printed.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
# the interpreter would stand in for the compiled kernels: make sure it is off
env -u TRITON_INTERPRET timeout 240 python3 -m pytest -q -m cuda -p no:cacheprovider \
    tests/test_cuda.py 2>&1 | tail -25
env -u TRITON_INTERPRET timeout 300 python3 bench/run_all.py --gpu --no-tools --timeout 120
