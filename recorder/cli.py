"""``tensortrace record``: run a recipe and record it. Imports torch only when it runs."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

__all__ = ["register", "parse_bytes"]


def parse_bytes(text: str) -> int:
    """``512M``, ``2G``, ``1000`` -> bytes."""
    t = text.strip().upper().removesuffix("B")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(t[-1:], 1)
    try:
        value = float(t[:-1] if mult != 1 else t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}")
    return int(value * mult)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "record",
        help="run a recipe (build_model/run_step) and record every layer call into a trace",
        description="Build the recipe's model, run N steps (the recorder calls backward) and "
        "write weights, every module call's inputs/outputs/gradients and summaries to TRACE.",
    )
    p.add_argument("recipe", metavar="RECIPE", help="a .py file or module defining build_model() and run_step(model, step)")
    p.add_argument("-o", "--output", required=True, metavar="TRACE", help="trace file to write (HDF5)")
    p.add_argument("--steps", type=int, default=1, help="training steps to run (default 1)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    p.add_argument("--include", action="append", default=[], metavar="GLOB", help="record only module paths matching GLOB (repeatable)")
    p.add_argument("--exclude", action="append", default=[], metavar="GLOB", help="skip module paths matching GLOB (repeatable)")
    p.add_argument("--seed", type=int, default=None, help="seed python, numpy and torch before building the model")
    p.add_argument("--grad-scale", type=float, default=1.0, metavar="X", help="multiply the loss by X before backward to lift tiny gradients above float noise")
    p.add_argument("--mode", choices=("full", "stats"), default="full", help="full tensors, or summaries only (default full)")
    p.add_argument("--every", type=int, default=1, metavar="N", help="record every N-th step")
    p.add_argument("--max-calls", type=int, default=None, metavar="N", help="record at most N calls per module")
    p.add_argument("--byte-budget", type=parse_bytes, default=None, metavar="SIZE", help="stop recording once SIZE of tensor data was captured")
    p.add_argument("--memory-budget", type=parse_bytes, default=1 << 30, metavar="SIZE", help="host memory for copies waiting to be written (default 1G)")
    p.add_argument("--compression", choices=("none", "gzip", "lzf"), default="none", help="HDF5 compression of tensor data (default none)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    p.set_defaults(func=_run)


class _Progress:
    """One status line on stderr: steps, calls, bytes written."""

    def __init__(self, steps: int, *, enabled: bool) -> None:
        self.steps, self.enabled = steps, enabled
        self.tty = sys.stderr.isatty()
        self.start = time.perf_counter()
        self._last = 0.0
        self._last_step = -1

    def __call__(self, rec: Any) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if self.tty and now - self._last < 0.1:
            return
        if not self.tty and rec.step_index == self._last_step:
            return
        self._last, self._last_step = now, rec.step_index
        line = (f"recording: step {min(rec.step_index, self.steps)}/{self.steps} · {rec.calls} calls · "
                f"{rec.bytes_written / 1e6:.1f} MB written · {now - self.start:.1f}s")
        if self.tty:
            print("\r" + line, end="", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)


def _run(args: argparse.Namespace) -> int:
    from tracefmt import UsageError

    from ._recipe import record_recipe
    from ._recorder import RecordOptions

    if args.steps < 1:
        raise UsageError("--steps must be at least 1")
    options = RecordOptions(
        mode=args.mode, include=tuple(args.include), exclude=tuple(args.exclude),
        grad_scale=args.grad_scale, every=args.every, max_calls_per_module=args.max_calls,
        byte_budget=args.byte_budget, memory_budget=args.memory_budget,
        compression=args.compression,
    )
    progress = _Progress(args.steps, enabled=not args.quiet)
    stats = record_recipe(args.recipe, args.output, steps=args.steps, device=args.device,
                          seed=args.seed, options=options, on_progress=progress)
    if progress.enabled and progress.tty:
        print(file=sys.stderr)
    if not args.quiet:
        print(f"wrote {args.output}: {stats['steps']} steps, {stats['calls']} calls, "
              f"{stats['tensors']} tensors ({stats['deduplicated']} deduplicated), "
              f"{stats['bytes_written'] / 1e6:.1f} MB in {stats['seconds']:.2f}s")
    return 0
