"""The terminal summary of a replay: a table in report order, divergences called out."""

from __future__ import annotations

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from ._report import CallResult, ReplayReport, describe_failure

__all__ = ["render_report", "print_report"]

_STATUS_STYLE = {"pass": "green", "fail": "bold red", "error": "bold magenta", "skipped": "dim"}


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2e}"


def _row(table: Table, r: CallResult) -> None:
    w = r.worst()
    table.add_row(
        str(r.call), r.label, "fwd" if r.phase == "forward" else "bwd",
        Text(r.status, style=_STATUS_STYLE[r.status]),
        w.name if w else "-", _fmt(w.max_abs_err) if w else "-", _batches(r),
    )


def _batches(r: CallResult) -> str:
    bad = r.bad_batch_indices
    if not bad:
        return ""
    if len(bad) <= 6:
        return ",".join(map(str, bad))
    return f"{bad[0]}..{bad[-1]} ({len(bad)})"


def render_report(report: ReplayReport, *, all_calls: bool = False, limit: int = 40) -> Group:
    """The summary: counts, first divergences, and the table (failing rows, or all)."""
    c = report.counts()
    head = Text.assemble(
        ("replay ", "bold"), f"{report.trace} with {report.candidates} on {report.device}: ",
        (f"{c['passed']} passed", "green"), ", ",
        (f"{c['failed']} failed", "bold red" if c["failed"] else ""), ", ",
        (f"{c['errors']} errors", "bold magenta" if c["errors"] else ""), ", ",
        f"{c['skipped']} skipped ({c['calls']} call results)",
    )
    parts: list = [head]
    for phase in ("forward", "backward"):
        first = report.first_divergence(phase)
        if first is None:
            parts.append(Text(f"first {phase} divergence: none", style="green"))
        else:
            parts.append(Text.assemble(
                (f"first {phase} divergence: ", "bold"),
                (f"call {first.call} {first.label} ({first.type})", "bold red"),
                f"\n  {describe_failure(first)}"))
    rows = [r for r in report.results if all_calls or r.status in ("fail", "error")]
    if rows:
        table = Table(title=None, show_edge=False, pad_edge=False, expand=False)
        for col, just in (("call", "right"), ("module#n", "left"), ("ph", "left"), ("status", "left"),
                          ("worst", "left"), ("max|err|", "right"), ("bad batch", "left")):
            table.add_column(col, justify=just, overflow="fold",
                             min_width=28 if col == "module#n" else None)
        for r in rows[:limit]:
            _row(table, r)
        parts.append(table)
        if len(rows) > limit:
            parts.append(Text(f"... {len(rows) - limit} more rows in the JSON report", style="dim"))
    return Group(*parts)


def print_report(report: ReplayReport, *, console: Console | None = None, all_calls: bool = False) -> None:
    (console or Console()).print(render_report(report, all_calls=all_calls))
