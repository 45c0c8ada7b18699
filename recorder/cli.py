"""``tensortrace record``: run a recipe and record it. Imports torch only when it runs.

Ctrl-C stops the recording: what was queued is flushed, the trace is left without its END
event (readable; ``tensortrace repair`` completes it) and the command prints one line and
exits with status 130, the shell's code for SIGINT, so scripts can tell an interrupted run
from a failed one (status 2). A second Ctrl-C exits at once; the flushed part stays readable.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["register", "parse_bytes", "INTERRUPTED"]

INTERRUPTED = 130


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
    p.add_argument("--memory-budget", type=parse_bytes, default=1 << 30, metavar="SIZE", help="host memory for copies waiting to be summarised and written (default 1G); as much again is kept for reuse")
    p.add_argument("--compression", choices=("none", "gzip", "lzf"), default="none", help="HDF5 compression of tensor data (default none)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    p.set_defaults(func=_run)


class _Progress:
    """One status line on stderr: steps, calls, bytes written."""

    def __init__(self, steps: int, *, enabled: bool) -> None:
        self.steps, self.enabled = steps, enabled
        self.recorder: Any = None
        self.tty = sys.stderr.isatty()
        self.start = time.perf_counter()
        self._last = 0.0
        self._last_step = -1

    def end_line(self) -> None:
        """End a tty status line so an error message starts on its own line."""
        if self.enabled and self.tty and self._last:
            print(file=sys.stderr)

    def trace_path(self, default: str) -> str:
        """The file being written (a distributed run writes one per rank, not ``-o`` itself)."""
        return default if self.recorder is None else str(self.recorder.path)

    def kept(self) -> str:
        """What the trace holds after a stop, for the one-line message (needs ``recorder``)."""
        rec = self.recorder
        return f"stopped in step {rec.step_index} with {rec.flushed_calls} of {rec.calls} calls on disk"

    def __call__(self, rec: Any) -> None:
        self.recorder = rec
        if not self.enabled:
            return
        now = time.perf_counter()
        if self.tty and now - self._last < 0.1:
            return
        if not self.tty and rec.step_index == self._last_step:
            return
        self._last, self._last_step = now, rec.step_index
        line = (f"recording: step {min(rec.step_index, self.steps)}/{self.steps} · {rec.calls} calls "
                f"({rec.flushed_calls} on disk) · {rec.bytes_written / 1e6:.1f} MB written · "
                f"{now - self.start:.1f}s")
        # one write per line: a Ctrl-C between text and newline would glue the error line on
        sys.stderr.write("\r" + line if self.tty else line + "\n")
        sys.stderr.flush()


@contextmanager
def _sigint_once(on_second: Callable[[], None]) -> Iterator[None]:
    """First Ctrl-C raises KeyboardInterrupt (a clean stop); a second one calls ``on_second``."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    hits = 0

    def handler(signum: int, frame: Any) -> None:
        nonlocal hits
        hits += 1
        if hits > 1:
            on_second()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _run(args: argparse.Namespace) -> int:
    from tracefmt import TraceWriteError, UsageError
    from tracefmt.cli import fail

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

    def force_exit() -> None:
        progress.end_line()
        fail(f"{progress.trace_path(args.output)}: interrupted again; stopped without finishing "
             "the write (the flushed part stays readable)")
        os._exit(INTERRUPTED)

    try:
        with _sigint_once(force_exit):
            stats = record_recipe(args.recipe, args.output, steps=args.steps,
                                  device=args.device, seed=args.seed, options=options,
                                  on_progress=progress)
    except KeyboardInterrupt:
        progress.end_line()
        if progress.recorder is None:
            fail(f"{args.output}: interrupted before recording started")
        else:
            fail(f"{progress.trace_path(args.output)}: interrupted; {progress.kept()}; the trace "
                 "is incomplete but readable ('tensortrace repair' completes it)")
        return INTERRUPTED
    except TraceWriteError as exc:
        progress.end_line()
        if progress.recorder is None:
            raise
        raise TraceWriteError(f"{exc.message}; {progress.kept()}", path=exc.path) from None
    if progress.enabled and progress.tty:
        print(file=sys.stderr)
    if not args.quiet:
        print(f"wrote {args.output}: {stats['steps']} steps, {stats['calls']} calls, "
              f"{stats['tensors']} tensors ({stats['deduplicated']} deduplicated), "
              f"{stats['bytes_written'] / 1e6:.1f} MB in {stats['seconds']:.2f}s")
    return 0
