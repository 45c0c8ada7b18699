"""What one device summary costs: the Triton kernels against the torch formulation, on CUDA.

    python bench/summary_kernels.py [--reps 50]

Stats mode summarises every tensor a step touches, so its overhead is this per-tensor cost
times the tensors per step. For tensors shaped like the GPU model's (batch 32x128, d=512,
vocab 16k), each path is timed side by side in one run: host time per call (what the
training thread pays to launch it, nothing synchronised) and device time per call (CUDA
events around ``reps`` calls), with a plain ``clone`` of the same tensor for scale.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import common  # noqa: F401 - puts the repository on sys.path for the bare GPU checkout
from common import table

SHAPES = {
    "activation 32x128x512": (32, 128, 512),
    "ffn 32x128x2048": (32, 128, 2048),
    "logits 32x128x16000": (32, 128, 16000),
    "weight 512x512": (512, 512),
    "embedding 16000x512": (16000, 512),
    "bias 512": (512,),
}


def _time(fn: Callable[[], object], reps: int, sync: Callable[[], None], event: type
          ) -> tuple[float, float]:
    """(host seconds per call, device seconds per call) over ``reps`` back-to-back calls."""
    fn()
    sync()
    start, end = event(enable_timing=True), event(enable_timing=True)
    start.record()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    host = (time.perf_counter() - t0) / reps
    end.record()
    sync()
    return host, start.elapsed_time(end) / 1e3 / reps


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=50, help="calls per timing (default 50)")
    args = p.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("summary_kernels: needs a CUDA device")
        return 2
    from recorder._device_summary import raw_summary
    from recorder._summary import summary_vector

    sync, event = torch.cuda.synchronize, torch.cuda.Event
    rows = []
    for label, shape in SHAPES.items():
        t = torch.randn(shape, device="cuda")
        gb = t.numel() * 4 / 1e9
        h_k, d_k = _time(lambda t=t: raw_summary(t), args.reps, sync, event)
        h_t, d_t = _time(lambda t=t: summary_vector(t), args.reps, sync, event)
        h_c, d_c = _time(lambda t=t: t.clone(), args.reps, sync, event)
        rows.append([label, f"{gb * 1e3:.1f}",
                     f"{h_k * 1e6:.0f}", f"{d_k * 1e6:.0f}", f"{gb / d_k:.0f}",
                     f"{h_t * 1e6:.0f}", f"{d_t * 1e6:.0f}",
                     f"{h_c * 1e6:.0f}", f"{d_c * 1e6:.0f}"])
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, {args.reps} calls each")
    print(table(["tensor (float32)", "MB", "triton host us", "triton dev us", "triton GB/s",
                 "torch host us", "torch dev us", "clone host us", "clone dev us"], rows,
                title="One device summary: Triton kernels vs torch ops (per call)"))
    print("host us: training-thread time to launch one summary; dev us: GPU time per summary. "
          "The torch path's bincount reads its maximum back, so its host time includes a sync.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
