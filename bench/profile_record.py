"""Where a recorded step's time goes: host syncs, hot functions, and each thread's CPU time.

    python bench/profile_record.py [--device cuda] [--size gpu] [--mode stats|full] [--threads N] [--top 25]

A diagnosis aid next to record.py's ratios, not a benchmark: after warm-up steps it
(1) on CUDA, runs one step under ``torch.cuda.set_sync_debug_mode("warn")`` and lists every
place that made the host wait for the GPU, (2) profiles one step with cProfile (the training
thread; every thread from Python 3.12, whose cProfile uses sys.monitoring), (3) times a few steps and reads each thread's CPU seconds from /proc, so the
summary and writer threads' share shows, and (4) times the same step with bare module hooks
(a pre-hook, a hook and a gradient hook per call, doing nothing): the floor of any recorder
that hooks every module.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import common  # noqa: F401 - puts the repository on sys.path for the bare GPU checkout
import model as bench_model


def _thread_cpu() -> dict[str, float]:
    """CPU seconds of each live thread of this process, by thread name."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for task in Path("/proc/self/task").iterdir():
        fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        name = names.get(int(task.name), "other (torch, CUDA, OpenMP)")
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def _sync_sites(step: Any) -> Counter[str]:
    """The code lines that made the host wait for the GPU during one ``step()``."""
    import torch

    sites: Counter[str] = Counter()

    def show(message: Any, category: Any, filename: str, lineno: int, *a: Any, **k: Any) -> None:
        frames = [f for f in traceback.extract_stack()[:-1] if "warnings" not in f.filename]
        ours = [f for f in frames if "/recorder/" in f.filename or "/bench/" in f.filename]
        where = ours[-1] if ours else frames[-1]
        sites[f"{Path(where.filename).name}:{where.lineno} {where.line}  <- {str(message)[:60]}"] += 1

    old = warnings.showwarning
    warnings.showwarning = show
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                step()
            finally:
                torch.cuda.set_sync_debug_mode("default")
    finally:
        warnings.showwarning = old
    return sites


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", choices=list(bench_model.SIZES), default=None,
                   help="model size (default: gpu on cuda, small on cpu)")
    p.add_argument("--mode", choices=["stats", "full"], default="stats")
    p.add_argument("--steps", type=int, default=3, help="timed steps (default 3)")
    p.add_argument("--top", type=int, default=25, help="cProfile rows to print")
    p.add_argument("--threads", type=int, default=0,
                   help="torch intra-op threads (default: torch's own choice)")
    args = p.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    import recorder

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    cfg = bench_model.SIZES[args.size or ("gpu" if cuda else "small")]
    model = bench_model.build(cfg, device)
    batch = bench_model.make_batch(cfg, device)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    def timed(step: Any, n: int) -> float:
        sync()
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        sync()
        return (time.perf_counter() - t0) / n

    def plain() -> None:
        bench_model.train_step(model, batch)

    plain()
    plain_s = timed(plain, args.steps)
    hooks = []

    def grad_hook(g: Any) -> None:
        return None

    def fwd_hook(mod: Any, a: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor) and out.requires_grad:
            out.register_hook(grad_hook)

    for mod in model.modules():
        hooks.append(mod.register_forward_pre_hook(lambda mod, a: None))
        hooks.append(mod.register_forward_hook(fwd_hook))
    plain()
    hooks_s = timed(plain, args.steps)
    for h in hooks:
        h.remove()
    print(f"model: {bench_model.describe(cfg)} on {device}, mode={args.mode}")
    print(f"plain step {plain_s * 1e3:.1f} ms; with bare module hooks {hooks_s * 1e3:.1f} ms "
          f"({hooks_s / plain_s:.2f}x)")
    out = Path(tempfile.mkdtemp(prefix="tt-profile-")) / "trace.h5"
    with recorder.record(model, out, mode=args.mode) as rec:
        def step() -> None:
            rec.note_loss(bench_model.train_step(model, batch))
            rec.step()

        for _ in range(2):
            step()
        rec.flush()
        if cuda:
            sites = _sync_sites(step)
            print(f"\nhost syncs in one recorded step: {sum(sites.values())}")
            for where, n in sites.most_common(15):
                print(f"  {n:5d}  {where}")
        prof = cProfile.Profile()
        prof.enable()
        step()
        sync()
        prof.disable()
        rec.flush()
        before = _thread_cpu()
        rec_s = timed(step, args.steps)
        rec.flush()
        after = _thread_cpu()
    print(f"\nrecorded step {rec_s * 1e3:.1f} ms ({rec_s / plain_s:.2f}x plain), "
          f"{rec.stats['calls'] / (args.steps + 4):.0f} calls and "
          f"{rec.stats['tensors'] / (args.steps + 4):.0f} tensors per step")
    print("CPU seconds per step by thread: " + ", ".join(
        f"{k} {(after.get(k, 0.0) - before.get(k, 0.0)) / args.steps:.3f}"
        for k in sorted(after)))
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(args.top)
    print("\ncProfile of one recorded step, by own time (the training thread; from Python 3.12 "
          "cProfile sees every thread):")
    lines = buf.getvalue().splitlines()
    start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
    print("\n".join(line for line in lines[start:] if line.strip()))
    out.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
