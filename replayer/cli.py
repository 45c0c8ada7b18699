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
    p.add_argument("--isolate", action="store_true", help="run candidates in a child process: a crash or hang becomes an error result for that call")
    p.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS", help="with --isolate: time allowed per call before the child is killed (default 60)")
    p.add_argument("--splice", action="store_true", help="run the whole recipe model with the candidates swapped in, record it and diff it against TRACE (needs --recipe)")
    p.add_argument("--recipe", metavar="RECIPE", help="with --splice: the recipe the trace was recorded from")
    p.add_argument("--splice-trace", metavar="PATH", help="with --splice: keep the spliced run's trace here")
    p.add_argument("--rank", type=int, default=0, metavar="R", help="which rank of a trace set to replay (default 0)")
    p.set_defaults(func=run_replay)

    d = sub.add_parser(
        "diff", help="compare two traces call by call (no candidate code needed)",
        description="Align the calls of B with those of A by module path (after --map renames), "
        "step and call index within the step; compare outputs and gradients with replay's "
        "comparison and report. Calls only one trace has are listed as skipped. Exit 0 all "
        "pass, 1 divergence, 2 usage or input error.")
    d.add_argument("a", metavar="A.h5", help="the reference trace")
    d.add_argument("b", metavar="B.h5", help="the trace to judge against it")
    d.add_argument("--map", metavar="MAP", help="module-path prefix renames for B: a JSON object or 'old=new' lines")
    d.add_argument("--step", type=int, default=None, help="compare only this step")
    d.add_argument("--rtol", type=float, default=None, help="relative tolerance for every tensor")
    d.add_argument("--atol", type=float, default=None, help="absolute floor for every tensor (default: follows the tensor's scale)")
    d.add_argument("--tol", action="append", default=[], metavar="[GLOB:]key=value,...", help="tolerance override (repeatable; last match wins)")
    d.add_argument("--json", metavar="REPORT", help="write the JSON report here")
    d.add_argument("--junit", metavar="XML", help="write a JUnit XML file, one test case per call")
    d.add_argument("--results", metavar="RESULTS.h5", help="write B's tensors as candidate tensors for the TUI")
    d.add_argument("--all", action="store_true", help="list every call in the terminal table, not only failures")
    d.add_argument("-q", "--quiet", action="store_true", help="print nothing; the exit status says it")
    d.set_defaults(func=run_diff)

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


def _check_replay_options(args: argparse.Namespace) -> None:
    from tracefmt import UsageError

    if args.splice:
        if not args.recipe:
            raise UsageError("--splice needs --recipe RECIPE (the recipe the trace was recorded from)")
        for flag, given in (("--isolate", args.isolate), ("--noise-floor", args.noise_floor)):
            if given:
                raise UsageError(f"{flag} does not apply to --splice")
    else:
        for flag, given in (("--recipe", args.recipe), ("--splice-trace", args.splice_trace)):
            if given:
                raise UsageError(f"{flag} only applies to --splice")
    if not args.timeout > 0:
        raise UsageError("--timeout must be a positive number of seconds")


def _write_outputs(report: object, args: argparse.Namespace) -> None:
    from rich.console import Console

    from ._outputs import write_report_files

    write_report_files(report, json_path=args.json, junit_path=args.junit,  # type: ignore[arg-type]
                       results_path=args.results)
    for path in (args.json, args.junit, args.results):
        if path and not args.quiet:
            Console(stderr=True).print(f"wrote {Path(path)}", style="dim")


def run_splice(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ._console import print_report
    from ._splice import render_growth, splice_run

    report, rows = splice_run(args.trace, args.candidates, args.recipe, device=args.device,
                              step=args.step, tolerances=_tolerance_table(args),
                              only=tuple(args.only), splice_trace=args.splice_trace,
                              keep_outputs=bool(args.results))
    if not args.quiet:
        console = Console()
        console.print(render_growth(rows, max_depth=None if args.all else 2))
        print_report(report, console=console, all_calls=args.all)
        if args.splice_trace:
            console.print(f"spliced trace kept at {args.splice_trace}", style="dim")
    _write_outputs(report, args)
    return 0 if report.ok else 1


def run_diff(args: argparse.Namespace) -> int:
    from ._console import print_report
    from ._diff import diff_traces, load_map

    renames = load_map(args.map) if args.map else {}
    report = diff_traces(args.a, args.b, renames=renames, tolerances=_tolerance_table(args),
                         step=args.step, keep_outputs=bool(args.results))
    if not args.quiet:
        print_report(report, all_calls=args.all)
    _write_outputs(report, args)
    return 0 if report.ok else 1


def run_replay(args: argparse.Namespace) -> int:
    from tracefmt import resolve_rank_path

    from ._console import print_report
    from ._replay import ReplayOptions
    from ._sharded import check_sharded_options, replay_maybe_sharded

    _check_replay_options(args)
    check_sharded_options(isolate=args.isolate, splice=args.splice)  # torchrun: _sharded.py
    args.trace = str(resolve_rank_path(args.trace, rank=args.rank))  # a trace set: rank R
    if args.splice:
        return run_splice(args)
    options = ReplayOptions(device=args.device, only=tuple(args.only), step=args.step,
                            tolerances=_tolerance_table(args), noise_floor=args.noise_floor,
                            keep_outputs=bool(args.results), isolate=args.isolate,
                            timeout=args.timeout)
    tty = sys.stderr.isatty() and not args.quiet

    def progress(done: int, total: int, result: object) -> None:
        if tty:
            print(f"\rreplaying: {done}/{total} calls", end="", file=sys.stderr, flush=True)

    report = replay_maybe_sharded(args.trace, args.candidates, options=options,
                                  on_progress=progress)
    if isinstance(report, int):  # a rank > 0 of a sharded replay: rank 0 prints and writes
        return report
    if tty:
        print(file=sys.stderr)
    if not args.quiet:
        print_report(report, all_calls=args.all)
    _write_outputs(report, args)
    return 0 if report.ok else 1


def run_demo_command(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    return run_demo(Path(args.out), train_steps=args.train_steps)
