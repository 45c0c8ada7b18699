"""Subcommands of the tui package: ``tui``, ``show`` and ``check``.

Registering imports nothing but argparse; each handler imports its modules when it runs,
so ``tensortrace --help`` stays instant and no path here ever imports torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tracefmt import TraceError, TraceNotFoundError, UsageError, resolve_rank_path

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``tui``, ``show`` and ``check`` to the ``tensortrace`` parser."""
    p = sub.add_parser(
        "tui",
        help="browse a trace (and replay results) in the terminal",
        description="Layer tree and call list with pass/fail/NaN badges, per-call debug table, "
        "histogram and heatmap of any tensor or gradient, error heatmaps with --results. "
        "Press ? inside for every key.",
    )
    p.add_argument("trace", metavar="TRACE")
    p.add_argument(
        "--results", metavar="RESULTS.h5", help="results file written by 'replay --results'"
    )
    p.add_argument(
        "--rank", type=int, default=0, metavar="R", help="which rank of a trace set (default 0)"
    )
    p.set_defaults(func=run_tui)

    p = sub.add_parser(
        "show",
        help="print one call's table, histogram and heatmap (for CI logs)",
        description="Print the header, the debug table and the histogram and heatmap of one tensor "
        "of one call. Colours on a terminal, plain glyphs when piped or with NO_COLOR "
        "(TENSORTRACE_COLOR=none|16|256|truecolor overrides).",
    )
    p.add_argument("trace", metavar="TRACE")
    p.add_argument(
        "call", metavar="CALL", help="call index, module path (its first call) or PATH#N"
    )
    p.add_argument(
        "--tensor",
        metavar="NAME",
        help="tensor name, e.g. args.0 or outputs (default: first output)",
    )
    p.add_argument(
        "--grad", action="store_true", help="show the tensor's gradient instead of its values"
    )
    p.add_argument(
        "--hist", action="store_true", help="print the histogram (default: histogram and heatmap)"
    )
    p.add_argument(
        "--heatmap", action="store_true", help="print the heatmap (default: histogram and heatmap)"
    )
    p.add_argument(
        "--results", metavar="RESULTS.h5", help="add the comparison and the error heatmap"
    )
    p.add_argument("--width", type=int, metavar="N", help="output width in columns")
    p.add_argument(
        "--rank", type=int, default=0, metavar="R", help="which rank of a trace set (default 0)"
    )
    p.set_defaults(func=run_show)

    p = sub.add_parser(
        "check",
        help="health alerts from the record-time summaries (no candidate needed)",
        description="First NaN/Inf, magnitude jumps, gradients zero for some batch elements only, "
        "saturated softmax, all-zero parameter gradients. Works on stats-mode traces. "
        "Exit 1 when there are alerts, 0 when none.",
    )
    p.add_argument("trace", metavar="TRACE")
    p.add_argument("--json", action="store_true", help='write {"alerts": [...]} to stdout')
    p.add_argument(
        "--rank", type=int, default=0, metavar="R", help="which rank of a trace set (default 0)"
    )
    p.set_defaults(func=run_check)


def _existing(path: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise TraceNotFoundError("no such file", path=p)
    return p


def run_tui(args: argparse.Namespace) -> int:
    """Run the app; a trace or results file that cannot be opened ends it with status 2."""
    trace = resolve_rank_path(_existing(args.trace), rank=args.rank)  # a set: rank R's trace
    results = None if args.results is None else _existing(args.results)
    # Opening reads only the event index (milliseconds): a file that is not a trace gets its
    # one-line error before the screen is taken over, not after.
    from tracefmt import open_results, open_trace

    open_trace(trace).close()
    if results is not None:
        open_results(results).close()
    from ._app import TraceApp

    app = TraceApp(trace, results)
    app.run()
    error = app.open_error
    if error is not None:
        if isinstance(error, TraceError):
            raise error
        raise TraceError(str(error), path=trace)
    return 0


def run_show(args: argparse.Namespace) -> int:
    """Print one call; colours only when stdout is a terminal."""
    from rich.console import Console

    from tracefmt import open_results, open_trace_or_rank

    from ._env import RenderSettings
    from ._show import show_call

    if args.width is not None and args.width < 20:
        raise UsageError("--width must be at least 20")
    settings = RenderSettings.from_env(is_terminal=sys.stdout.isatty())
    console = Console(
        color_system=settings.color_system,  # type: ignore[arg-type]
        force_terminal=not settings.plain,
        no_color=settings.plain,
        width=args.width or (None if sys.stdout.isatty() else 100),
        highlight=False,
        emoji=False,
        soft_wrap=False,
    )
    with open_trace_or_rank(args.trace, rank=args.rank) as reader:
        results = None if args.results is None else open_results(args.results)
        try:
            show_call(
                reader,
                args.call,
                console=console,
                settings=settings,
                tensor=args.tensor,
                grad=args.grad,
                hist=args.hist,
                heatmap=args.heatmap,
                results=results,
            )
        finally:
            if results is not None:
                results.close()
    return 0


def run_check(args: argparse.Namespace) -> int:
    """Print the alerts (or JSON); exit 1 when there is any."""
    from tracefmt import cross_rank_alerts, is_traceset, open_trace_or_rank

    from ._check import check_trace

    with open_trace_or_rank(args.trace, rank=args.rank) as reader:
        alerts = check_trace(reader)
    if is_traceset(args.trace):  # replicated tensors must agree bitwise across ranks
        alerts = [*alerts, *cross_rank_alerts(args.trace)]
    if args.json:
        json.dump({"alerts": [a.to_dict() for a in alerts]}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif not alerts:
        print(f"{args.trace}: no alerts")
    else:
        print(f"{args.trace}: {len(alerts)} alert{'s' if len(alerts) != 1 else ''}")
        for a in alerts:
            where = f"call {a.call} {a.phase}" if a.call is not None else a.phase
            print(
                f"  {a.label}: {where} {a.module or '<root>'}"
                f"{' ' + a.tensor if a.tensor else ''}: {a.message}"
            )
    return 1 if alerts else 0
