"""The app's one-line bars: what is open, which call, and how the selected tensor fared.

Pure functions of the app's state, so their wording is testable without a terminal.
"""

from __future__ import annotations

from rich.text import Text

from ._check import Alert
from ._index import CallRow, Phase, TraceIndex
from ._table import comparison_line
from ._viewport import Viewport
from ._widgets import badge

__all__ = ["call_bar", "status_bar", "title_bar"]


def title_bar(
    index: TraceIndex | None,
    *,
    order: Phase,
    grad: bool,
    alerts: list[Alert] | None,
    busy: bool,
    error: BaseException | None = None,
) -> Text:
    """Trace name, call count, divergences, alerts, list order and data/gradient mode."""
    if index is None:
        text = Text("opening…" if error is None else str(error))
    else:
        text = Text(f" {index.name}", style="bold")
        text.append(f" · {len(index.rows)} calls")
        if index.results_name:
            failing = len(index.divergences)
            text.append(" · ")
            text.append(f"{failing} diverging", style="bold red" if failing else "green")
        if alerts:
            text.append(f" · {len(alerts)} alerts (a)", style="yellow")
        text.append(f" · {order} order · ")
        text.append("gradient" if grad else "data", style="bold")
    if busy:
        text.append(" …", style="dim")
    return text


def call_bar(row: CallRow, *, with_results: bool) -> Text:
    """Badges, call id, ``path#N``, class and step of the selected call."""
    text = Text()
    for seg in badge(row, with_results=with_results):
        text.append(seg.text, seg.style)
    text.append(f" call {row.call} ", style="bold")
    text.append(row.label, style="bold cyan")
    text.append(f" · {row.type.rpartition('.')[2]} · step {row.step}", style="dim")
    return text


def status_bar(
    index: TraceIndex,
    call: int,
    *,
    phase: Phase,
    tensor: str | None,
    viewport: Viewport,
    mask: str | None,
) -> Text:
    """The replay verdict of the selected tensor (with results), then the view's state."""
    text = Text()
    if index.results:
        text.append_text(comparison_line(phase, index.result(call, phase), tensor=tensor))
        text.append(" │ ", style="dim")
    text.append(viewport.describe(), style="dim")
    if mask:
        text.append(f" · mask {mask}", style="dim")
    return text
