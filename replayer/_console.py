"""The terminal summary of a replay: a table in report order, divergences called out."""

from __future__ import annotations

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from ._report import CallResult, ReplayReport, StepResult, describe_failure

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


def _tolerances(table: dict) -> str:
    """The overrides in force, as given on the command line; or that defaults applied."""
    def fields(d: dict) -> str:
        return ",".join(f"{k}={v:g}" for k, v in d.items() if k != "pattern")

    parts = [fields(table.get("global") or {})] if table.get("global") else []
    parts += [f"{m['pattern']}:{fields(m)}" for m in table.get("modules") or []]
    return "; ".join(parts) + " (unset fields: dtype defaults)" if parts else "dtype defaults"


def _step_line(step: StepResult) -> Text:
    """``step N: loss reference X, candidate Y`` and what failed, for diff and splice."""
    def num(x: float | None) -> str:
        return "-" if x is None else f"{x:.6g}"

    line = Text.assemble(
        (f"step {step.step}: ", "bold"),
        f"loss reference {num(step.loss_reference)}, candidate {num(step.loss_candidate)} ",
        ("pass", "green") if step.passed else ("FAIL", "bold red"))
    for t in step.tensors:
        if not t.passed:
            line.append(f"\n  {t.name}: {t.message}")
    for note in step.notes:
        line.append(f"\n  {note}", style="dim")
    return line


def render_report(report: ReplayReport, *, all_calls: bool = False, limit: int = 40) -> Group:
    """The summary: counts, first divergences, and the table (failing rows, or all)."""
    c = report.counts()
    what = (f"{report.trace} against {report.candidates}: " if report.mode == "diff"
            else f"{report.trace} with {report.candidates} on {report.device}: ")
    verb = {"diff": "diff ", "splice": "splice "}.get(report.mode, "replay ")
    head = Text.assemble(
        (verb, "bold"), what,
        (f"{c['passed']} passed", "green"), ", ",
        (f"{c['failed']} failed", "bold red" if c["failed"] else ""), ", ",
        (f"{c['errors']} errors", "bold magenta" if c["errors"] else ""), ", ",
        f"{c['skipped']} skipped ({c['calls']} call results)",
    )
    parts: list = [head, Text(f"tolerances: {_tolerances(report.tolerances)}", style="dim")]
    for phase in ("forward", "backward"):
        first = report.first_divergence(phase)
        if first is None:
            parts.append(Text(f"first {phase} divergence: none", style="green"))
        else:
            parts.append(Text.assemble(
                (f"first {phase} divergence: ", "bold"),
                (f"call {first.call} {first.label} ({first.type})", "bold red"),
                f"\n  {describe_failure(first)}"))
    parts.extend(_step_line(s) for s in report.steps)
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
