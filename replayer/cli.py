"""Subcommands of the replayer: ``replay`` and ``diff``, and the ``demo``. Torch loads only when one runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "replay", help="feed a trace's recorded inputs into candidate layers and compare",
        description="For every recorded call of a module that has a candidate: restore RNG, "
        "flags and mode, run the candidate forward and backward on the recorded inputs and "
        "compare with the recorded outputs and gradients. Exit 0 all pass, 1 divergence or "
        "candidate error, 2 usage or input error.")
    p.add_argument("trace", metavar="TRACE")
    p.add_argument("candidates", metavar="CANDIDATES", help=".py file or module defining CANDIDATES")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    p.add_argument("--only", action="append", default=[], metavar="GLOB", help="replay only module paths matching GLOB (repeatable)")
    p.add_argument("--step", type=int, default=None, help="replay only this step")
    p.add_argument("--rtol", type=float, default=None, help="relative tolerance for every tensor")
    p.add_argument("--atol", type=float, default=None, help="absolute floor for every tensor (default: follows the tensor's scale)")
    p.add_argument("--tol", action="append", default=[], metavar="[GLOB:]key=value,...", help="tolerance override, e.g. 'decoder.*:rtol=1e-4' (repeatable; last match wins)")
    p.add_argument("--noise-floor", action="store_true", help="judge against the reference's own error versus a float64 recomputation")
    p.add_argument("--json", metavar="REPORT", help="write the JSON report here")
    p.add_argument("--junit", metavar="XML", help="write a JUnit XML file, one test case per call")
    p.add_argument("--results", metavar="RESULTS.h5", help="write candidate outputs and gradients for the TUI")
    p.add_argument("--all", action="store_true", help="list every call in the terminal table, not only failures")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    p.set_defaults(func=run_replay)

    d = sub.add_parser(
        "demo", help="record the example model, replay a correct and a broken port, show the bad layer",
        description="The whole workflow on the bundled example, CPU-only: record, replay correct "
        "candidates, replay the classic broken softmax, train both, write everything to DIR.")
    d.add_argument("--out", default="demo-out", metavar="DIR", help="where to write traces and reports (default demo-out)")
    d.add_argument("--train-steps", type=int, default=240, metavar="N", help="training steps for the loss curves (default 240)")
    d.set_defaults(func=run_demo_command)


def _tolerance_table(args: argparse.Namespace):  # noqa: ANN202 - replayer types load lazily
    from ._tolerance import parse_tolerance_overrides

    specs = []
    if args.rtol is not None:
        specs.append(f"rtol={args.rtol}")
    if args.atol is not None:
        specs.append(f"atol={args.atol}")
    specs.extend(args.tol)
    try:
        return parse_tolerance_overrides(specs)
    except ValueError as exc:
        from tracefmt import UsageError

        raise UsageError(f"bad tolerance: {exc}") from None


def run_replay(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ._console import print_report
    from ._outputs import write_report_files
    from ._replay import ReplayOptions, replay_trace

    options = ReplayOptions(device=args.device, only=tuple(args.only), step=args.step,
                            tolerances=_tolerance_table(args), noise_floor=args.noise_floor,
                            keep_outputs=bool(args.results))
    err = Console(stderr=True)
    tty = sys.stderr.isatty() and not args.quiet

    def progress(done: int, total: int, result: object) -> None:
        if tty:
            print(f"\rreplaying: {done}/{total} calls", end="", file=sys.stderr, flush=True)

    report = replay_trace(args.trace, args.candidates, options=options, on_progress=progress)
    if tty:
        print(file=sys.stderr)
    if not args.quiet:
        print_report(report, all_calls=args.all)
    write_report_files(report, json_path=args.json, junit_path=args.junit,
                       results_path=args.results)
    for path in (args.json, args.junit, args.results):
        if path and not args.quiet:
            err.print(f"wrote {Path(path)}", style="dim")
    return 0 if report.ok else 1


def run_demo_command(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    return run_demo(Path(args.out), train_steps=args.train_steps)
